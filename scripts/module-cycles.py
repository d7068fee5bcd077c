"""Import circles between the modules of each crate (not run in CI; see docs/architecture.md).

Usage: python3 scripts/module-cycles.py [CRATE_DIR ...]   (default: every workspace member)

Reads each crate's src/ as text: an edge runs from a module to every module it names through
`crate::`, `super::` or `self::` paths (in `use` and inline), with `pub use` re-exports followed
to the module that defines the item; `#[cfg(test)] mod tests` at a file's end is left out. Prints
each strongly connected set of modules with its edges, and exits 1 when there is one.
"""
import os, re, sys
from collections import defaultdict

def modules(src):
    mods = {}
    for dp, _, fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ('lib', 'main'): rel = rel[:-1]
            elif rel[-1] == 'mod': rel = rel[:-1]
            mods[tuple(rel)] = p
    return mods

def strip_tests(text):
    # drop #[cfg(test)] mod tests { ... } at end of file (approximate: from marker to end)
    i = text.find('#[cfg(test)]\nmod tests')
    if i < 0: i = text.find('#[cfg(test)]\npub mod tests')
    return text if i < 0 else text[:i]

def strip_comments(t):
    t = re.sub(r'//[^\n]*', '', t)
    return t

def expand_use(t):
    """Yield full paths from use statements with braces (one level of nesting handled recursively)."""
    out = []
    for m in re.finditer(r'\buse\s+([^;]+);', t, re.S):
        out += expand(m.group(1).replace('\n', ' ').replace(' ', ''))
    return out

def expand(s):
    if '{' not in s or '}' not in s: return [s]
    i = s.index('{'); pre = s[:i]; body = s[i+1:s.rindex('}')]
    parts, depth, cur = [], 0, ''
    for ch in body:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0: parts.append(cur); cur = ''
        else: cur += ch
    if cur: parts.append(cur)
    res = []
    for p in parts:
        for e in expand(p):
            res.append(pre + e if e != 'self' else pre.rstrip(':'))
    return res

def resolve(path, cur, mods):
    segs = path.split('::')
    if segs[0] == 'crate': base = []; segs = segs[1:]
    elif segs[0] == 'super':
        base = list(cur)
        while segs and segs[0] == 'super': base = base[:-1]; segs = segs[1:]
    elif segs[0] == 'self': base = list(cur); segs = segs[1:]
    else: return None
    best = tuple(base)
    for s in segs:
        cand = best + (s,)
        if cand in mods: best = cand
        else: break
    return best, segs[len(best)-len(base):] if len(best) >= len(base) else segs

def main(crate):
    src = os.path.join(crate, 'src')
    if not os.path.isdir(src): return False
    mods = modules(src)
    texts = {m: strip_comments(strip_tests(open(p).read())) for m, p in mods.items()}
    # re-exports in each module: name -> target module
    reexp = defaultdict(dict)
    for m, t in texts.items():
        for mm in re.finditer(r'\bpub(?:\([^)]*\))?\s+use\s+([^;]+);', t, re.S):
            for full in expand(mm.group(1).replace('\n','').replace(' ','')):
                r = resolve(full, m, mods)
                if r:
                    name = full.split('::')[-1].split(' as ')[-1]
                    reexp[m][name] = r[0]
    edges = defaultdict(set)
    for m, t in texts.items():
        paths = expand_use(t)
        paths += re.findall(r'\b((?:crate|super)(?:::\w+)+)', t)
        for p in paths:
            r = resolve(p, m, mods)
            if not r: continue
            tgt, rest = r
            while rest and rest[0] in reexp.get(tgt, {}) and reexp[tgt][rest[0]] != tgt:
                tgt = reexp[tgt][rest[0]]; rest = []
            if tgt != m and not (len(m) > len(tgt) and m[:len(tgt)] == tgt and not rest):
                # skip "use super::*"-like parent refs only when no item (rare)
                pass
            if tgt != m and m[:len(tgt)] != tgt or (tgt != m and rest):
                if tgt != m: edges[m].add(tgt)
    # tarjan
    idx, low, st, on, res = {}, {}, [], set(), []
    c = [0]
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in edges[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: res.append(comp)
    sys.setrecursionlimit(10000)
    for v in list(mods): 
        if v not in idx: sc(v)
    for comp in res:
        names = sorted('::'.join(x) or '<root>' for x in comp)
        print(f'{crate}: cycle: {names}')
        for v in comp:
            for w in edges[v]:
                if w in comp: print('   ', '::'.join(v) or '<root>', '->', '::'.join(w) or '<root>')
    return bool(res)

def members():
    import tomllib
    with open('Cargo.toml', 'rb') as f:
        return ['.'] + tomllib.load(f)['workspace']['members']


found = [main(c) for c in (sys.argv[1:] or members())]
sys.exit(1 if any(found) else 0)
