//! The broker crate's layers (`broker/src/lib.rs`): a module imports only
//! from its own layer and the layers below. Read from the source, outside
//! `#[cfg(test)]` code, so a new upward import fails here.

use std::path::Path;

/// Top to bottom; each inner list is one layer.
const LAYERS: &[&[&str]] = &[
    &["ctl"],
    &["ops"],
    &["connection"],
    &["broker", "config"],
    &["route"],
    &["state"],
    &["session"],
    &["persist"],
    &["auth", "tenant"],
    &["net"],
    &[
        "codec", "ids", "message", "topic", "clock", "metrics", "error", "reload", "records",
        "ratelog",
    ],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::<module>` paths of non-test code.
fn imports(src: &str) -> Vec<&str> {
    let code = src.split("#[cfg(test)]").next().unwrap_or("");
    code.match_indices("crate::")
        .map(|(i, _)| {
            let rest = &code[i + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn imports_flow_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    let mut unplaced = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs"))
            .expect("name");
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = rank(top) else {
            unplaced.push(top.to_owned());
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read");
        for m in imports(&text) {
            match rank(m) {
                Some(r) if r < own => upward.push(format!("{} -> {m}", rel.display())),
                Some(_) => {}
                None => unplaced.push(m.to_owned()),
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    assert!(
        unplaced.is_empty(),
        "modules in no layer (add them to LAYERS and lib.rs's map): {unplaced:?}"
    );
    assert!(upward.is_empty(), "imports against the layers: {upward:#?}");
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    // The check itself: a state-layer file naming `connection` is caught.
    let found = imports("use crate::connection::Conn;\n#[cfg(test)]\nuse crate::ops::sys;");
    assert_eq!(found, ["connection"]);
    assert!(rank("connection") < rank("state"));
}
