//! The crate's modules import only modules below them on the data path (the order the
//! module map in `src/lib.rs` and the README's "Layout" give). This reads every `crate::`
//! path in `src/` (outside comments) and fails on one that points up, or on two modules of
//! the same layer importing each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, highest first: a module may import its own layer (without a cycle) and those
/// after it. The longest matching prefix decides a module's layer.
const LAYERS: &[&[&str]] = &[
    &["proxy"],
    &["control"],
    &["listener"],
    &["client_connection"],
    &["dispatch"],
    &["handlers"],
    &["handler", "handlers::fetch::positions"],
    &["state"],
    &["mirror"],
    &["cluster"],
    &["security"],
    &["config"],
    &["routing"],
    &["error"],
    &["codec", "metrics", "sync"],
];

fn layer_of(module: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None; // (prefix length, layer)
    for (layer, prefixes) in LAYERS.iter().enumerate() {
        for prefix in *prefixes {
            let matches = module == *prefix || module.starts_with(&format!("{prefix}::"));
            if matches && best.is_none_or(|(length, _)| prefix.len() > length) {
                best = Some((prefix.len(), layer));
            }
        }
    }
    best.map(|(_, layer)| layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("file under src/");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The modules named by `crate::a::b` paths in `text`, outside `//` comments, as the longest
/// prefix that is a module of the crate (`crate::mirror::MirrorItem` → `mirror`).
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            for length in (1..=segments.len()).rev() {
                let candidate = segments[..length].join("::");
                if modules.contains(&candidate) {
                    found.insert(candidate);
                    break;
                }
            }
        }
        // `use crate::{a, b}` groups name modules too.
        if let Some(at) = code.find("crate::{") {
            let group = &code[at + "crate::{".len()..];
            for name in group.split([',', '}', ' ']).filter(|s| !s.is_empty()) {
                if modules.contains(name) {
                    found.insert(name.to_string());
                }
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_modules_below_it_on_the_data_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let library: Vec<(String, PathBuf)> = files
        .iter()
        .map(|file| (module_of(&src, file), file.clone()))
        // The binary (main, its CLI) sits above the library; lib.rs is the map.
        .filter(|(module, _)| module != "main" && module != "lib" && !module.starts_with("cli"))
        .collect();
    let modules: BTreeSet<String> = library.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (module, file) in &library {
        let layer = layer_of(module)
            .unwrap_or_else(|| panic!("module {module} has no layer in tests/layers.rs"));
        let text = std::fs::read_to_string(file).expect("source is readable");
        for imported in imports(&text, &modules) {
            if imported == *module || module.starts_with(&format!("{imported}::")) {
                continue; // itself, or a parent module's items (its own map)
            }
            let target = layer_of(&imported)
                .unwrap_or_else(|| panic!("module {imported} has no layer in tests/layers.rs"));
            if target < layer {
                upward.push(format!("{module} imports {imported}, which is above it"));
            }
            edges.entry(module.clone()).or_default().insert(imported);
        }
    }
    let mut cycles = Vec::new();
    for (module, targets) in &edges {
        for target in targets {
            let back = edges.get(target).is_some_and(|t| t.contains(module));
            let nested = target.starts_with(&format!("{module}::"));
            if back && !nested && module < target {
                cycles.push(format!("{module} and {target} import each other"));
            }
        }
    }
    assert!(
        upward.is_empty() && cycles.is_empty(),
        "layering broken:\n{}",
        upward
            .iter()
            .chain(&cycles)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The check sees the modules it must judge.
    for expected in ["handlers::produce", "mirror::producer", "control::cutover"] {
        assert!(
            modules.contains(expected),
            "{expected} not found under src/"
        );
    }
}
