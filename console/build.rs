//! The console's files are built by npm (console/web, `npm run build`) into web/dist before
//! cargo runs; `scripts/setup.sh` does that. Without them there is nothing to embed, so the
//! build stops here with the command that makes them, instead of serving an empty page.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=web/dist");
    if !Path::new("web/dist/index.html").is_file() {
        eprintln!(
            "error: console/web/dist/index.html is missing: the web console is not built.\n\
             Run scripts/setup.sh (it runs `npm ci && npm run build` in console/web), then build again."
        );
        std::process::exit(1);
    }
}
