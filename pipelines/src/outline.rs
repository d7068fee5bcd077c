//! The shape of a run's pipeline for people to look at (the web console draws it): every
//! task of every sub-DAG as a node, with its loop, condition and retry settings, and the
//! dependencies between siblings as edges. It is read from the graph stored with the run,
//! so it shows exactly what runs, with the same dependencies the engine waits on.

use serde::Serialize;
use serde_json::Value;

use crate::engine::join;
use crate::graph::{Body, Dag, Items, Pipeline};

/// Nodes and edges of a pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Outline {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// One task. `id` is the path its task records carry, except that a loop's iteration
/// index is left out: the node `fan/step` stands for the records `fan/0/step`,
/// `fan/1/step`, … (and a loop over one step, `fan`, for `fan/0`, `fan/1`, …).
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    /// The sub-DAG task this one runs inside (none at the top level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `exec` (one process per run of it) or `dag` (a group of tasks: a nested pipeline,
    /// a loop body or a condition branch).
    pub kind: &'static str,
    /// The CEL condition that must hold for the task to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(rename = "loop", skip_serializing_if = "Option::is_none")]
    pub iterate: Option<LoopOutline>,
    /// Runs even when what it depends on failed (an exit handler).
    pub always: bool,
    /// Attempts after the first.
    pub retries: u32,
    pub cache: bool,
}

/// How a task loops (`dsl.ParallelFor`).
#[derive(Debug, Clone, Serialize)]
pub struct LoopOutline {
    /// The constant list, or null when the items come from `input` at run time.
    pub items: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The body's input that receives each item.
    pub item: String,
    /// Iterations at once (0: no limit).
    pub parallelism: usize,
}

/// `to` waits for `from` (both siblings in one DAG).
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
}

impl Outline {
    /// The outline of `pipeline`, top level first, then each sub-DAG (walked with an
    /// explicit stack, as the engine's checks are).
    pub fn of(pipeline: &Pipeline) -> Outline {
        let mut outline = Outline {
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        let mut pending: Vec<(&Dag, Option<String>)> = vec![(&pipeline.root, None)];
        while let Some((dag, parent)) = pending.pop() {
            let prefix = parent.clone().unwrap_or_default();
            for task in &dag.tasks {
                let id = join(&prefix, &task.name);
                for dep in &task.after {
                    outline.edges.push(Edge {
                        from: join(&prefix, dep),
                        to: id.clone(),
                    });
                }
                let kind = match &task.body {
                    Body::Exec(_) => "exec",
                    Body::Dag(inner) => {
                        pending.push((inner, Some(id.clone())));
                        "dag"
                    }
                };
                outline.nodes.push(Node {
                    id,
                    name: task.name.clone(),
                    parent: parent.clone(),
                    kind,
                    condition: task.condition.clone(),
                    iterate: task.iterate.as_ref().map(|l| {
                        let (items, input) = match &l.items {
                            Items::Constant(items) => (Some(items.clone()), None),
                            Items::Input(name) => (None, Some(name.clone())),
                        };
                        LoopOutline {
                            items,
                            input,
                            item: l.item_input.clone(),
                            parallelism: l.parallelism,
                        }
                    }),
                    always: task.always,
                    retries: task.retry.max,
                    cache: task.cache,
                });
            }
        }
        outline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A KFP-style pipeline: a step, a loop whose body is a DAG of two steps in sequence, a
    /// condition branch, and an exit handler.
    #[test]
    fn nodes_carry_loops_and_conditions_and_edges_follow_dependencies() {
        let spec = serde_json::json!({
            "name": "p", "flavor": "kfp", "parameters": {},
            "root": {"tasks": [
                {"name": "a", "body": {"exec": {"argv": ["true"]}}},
                {"name": "fan", "after": ["a"],
                 "iterate": {"items": {"constant": [1, 2]}, "item_input": "x", "parallelism": 1},
                 "body": {"dag": {"tasks": [
                    {"name": "b", "body": {"exec": {"argv": ["true"]}}},
                    {"name": "c", "after": ["b"], "body": {"exec": {"argv": ["true"]}}}
                 ]}}},
                {"name": "branch", "after": ["a"], "condition": "inputs.parameter_values['n'] > 1",
                 "body": {"dag": {"tasks": [{"name": "d", "body": {"exec": {"argv": ["true"]}}}]}}},
                {"name": "exit", "after": ["fan", "branch"], "always": true,
                 "body": {"exec": {"argv": ["true"]}}}
            ]}
        });
        let pipeline: Pipeline = serde_json::from_value(spec).unwrap();
        let outline = Outline::of(&pipeline);
        let node = |id: &str| outline.nodes.iter().find(|n| n.id == id).unwrap();
        let ids: Vec<&str> = outline.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids.len(), 7, "{ids:?}");
        assert_eq!(node("fan").kind, "dag");
        let fan = node("fan").iterate.as_ref().unwrap();
        assert_eq!(fan.items.as_deref(), Some(&[1.into(), 2.into()][..]));
        assert_eq!((fan.item.as_str(), fan.parallelism), ("x", 1));
        assert_eq!(node("fan/c").parent.as_deref(), Some("fan"));
        assert!(node("branch").condition.as_deref().unwrap().contains("> 1"));
        assert_eq!(node("branch/d").parent.as_deref(), Some("branch"));
        assert!(node("exit").always);
        let edges: Vec<(&str, &str)> = outline
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        for edge in [
            ("a", "fan"),
            ("a", "branch"),
            ("fan", "exit"),
            ("branch", "exit"),
            ("fan/b", "fan/c"),
        ] {
            assert!(edges.contains(&edge), "{edge:?} not in {edges:?}");
        }
        assert_eq!(edges.len(), 5, "{edges:?}");
    }
}
