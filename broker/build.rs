//! Build facts for `porchlight_build_info` and `--version`: the git commit
//! (`PORCHLIGHT_GIT_COMMIT` from the environment when building outside a
//! checkout, as the Dockerfile does; "unknown" when neither is there).

fn main() {
    println!("cargo:rerun-if-env-changed=PORCHLIGHT_GIT_COMMIT");
    let commit = std::env::var("PORCHLIGHT_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PORCHLIGHT_GIT_COMMIT={commit}");
    // Rebuilt when HEAD moves: HEAD itself and the branch it names (only
    // files that exist, or cargo would rerun this every build).
    let git = std::path::Path::new("../.git");
    let head = git.join("HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed={}", head.display());
        if let Ok(text) = std::fs::read_to_string(&head) {
            if let Some(r) = text.strip_prefix("ref: ") {
                let branch = git.join(r.trim());
                if branch.exists() {
                    println!("cargo:rerun-if-changed={}", branch.display());
                }
            }
        }
    }
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}
