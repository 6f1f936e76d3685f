//! git clone and push over ssh through the chain: a bare repository on the "server" side is
//! cloned, a commit is pushed back (git's pack protocol needs exact half-close), and a second,
//! independent clone finds the pushed file.

use crate::support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::{require, run_ok, Chain};

fn git(chain: &Chain, cwd: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(cwd)
        .env("GIT_SSH_COMMAND", chain.sshd.git_ssh_command(&chain.proxy))
        .env("GIT_SSH_VARIANT", "ssh")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", chain.dir.path())
        .env("GIT_AUTHOR_NAME", "postern test")
        .env("GIT_AUTHOR_EMAIL", "test@postern.invalid")
        .env("GIT_COMMITTER_NAME", "postern test")
        .env("GIT_COMMITTER_EMAIL", "test@postern.invalid")
        .env("GIT_TERMINAL_PROMPT", "0");
    chain.proxy.apply_env(&mut cmd);
    cmd
}

#[test]
fn git_clone_push_and_clone_again_over_the_chain() {
    require("git");
    let chain = Chain::start("git-over-ssh", "git.localhost");
    let bare = chain.dir.join("server/repo.git");
    fs::create_dir_all(&bare).unwrap();
    run_ok(
        git(&chain, &bare).args(["init", "--bare", "-q", "-b", "main"]),
        "git init --bare",
    );
    let remote = format!("{}@{}:{}", chain.sshd.user, chain.hostname, bare.display());

    // First clone: an empty repository.
    let work = chain.dir.join("work");
    run_ok(
        git(&chain, chain.dir.path())
            .args(["clone", "-q", &remote])
            .arg(&work),
        "git clone (empty)",
    );

    // Commit a file with some bulk so the pack is more than a few bytes, and push it.
    let content: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    fs::write(work.join("hello.txt"), &content).unwrap();
    run_ok(git(&chain, &work).args(["add", "hello.txt"]), "git add");
    run_ok(
        git(&chain, &work).args(["commit", "-q", "-m", "add hello.txt"]),
        "git commit",
    );
    run_ok(
        git(&chain, &work).args(["push", "-q", "origin", "HEAD:refs/heads/main"]),
        "git push",
    );

    // The server side has the commit.
    let log = run_ok(
        git(&chain, &bare).args(["log", "--format=%s", "main"]),
        "git log on the bare repo",
    );
    assert_eq!(log.trim(), "add hello.txt");

    // A second, independent clone finds the file byte for byte.
    let again = chain.dir.join("again");
    run_ok(
        git(&chain, chain.dir.path())
            .args(["clone", "-q", &remote])
            .arg(&again),
        "git clone (after push)",
    );
    let got = fs::read_to_string(again.join("hello.txt")).expect("hello.txt in the new clone");
    assert!(got == content, "hello.txt differs after the round trip");
}
