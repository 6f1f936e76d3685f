//! The end-to-end tests, one test crate: each file in `tests/` is a module of it, and the
//! harness (`tests/support`) is compiled once for all of them. Sixty-four crates, each
//! compiling the harness again and linking on its own, spent 11½ of CI's 31 minutes building.
//! `Cargo.toml` sets `autotests = false` so cargo does not also build each file as a crate; a
//! new file must be listed below (`every_test_file_is_a_module_of_this_crate` fails until it is).
//!
//! Run one file's tests with `cargo test --release --test e2e FILE::` (e.g.
//! `--test e2e sessions_survive::`). All tests share one process: ports, namespaces and
//! directories are per process *and* counter (`support::free_port`, `netns`), and no test sets
//! environment variables or limits on itself.

mod support;

mod abandoned_download;
mod access_curl;
mod access_tcp_listener;
mod admin_console;
mod audit_flood;
mod bad_input_carrier;
mod bad_input_tunnel;
mod bastion;
mod browser_ssh_host_page;
mod bulk_transfer_half_close;
mod clean_exit_is_not_a_lost_path;
mod cli;
mod close_reason_survives_unread_input;
mod cloudflared_config_yml;
mod cloudflared_surface;
mod concurrent_sessions;
mod concurrent_sessions_default_sshd;
mod connection_limits;
mod demo;
mod descriptor_limits;
mod doctor;
mod edge_pool;
mod edge_reload;
mod edge_restart_reconnect;
mod edge_workers;
mod etcd_store;
mod etcd_tls;
mod git_over_ssh;
mod glibc_memcpy;
mod hostname_registration;
mod https_proxy_egress;
mod interactive_beside_bulk;
mod late_code_exchange;
mod live_sessions;
mod log_format;
mod login_confirmation;
mod login_links_sent_to_others;
mod long_link;
mod metrics_ready;
mod named_tunnels;
mod origin_assertion;
mod peer_text_escaped;
mod pending_login_limits;
mod pool_login;
mod pool_sso;
mod refusals;
mod resumable_memory;
mod revocation;
mod service_close_ends_access_ssh;
mod service_install;
mod service_token_rotation;
mod sessions_survive;
mod slow_reader_memory;
mod slowloris;
mod ssh_certificates;
mod ssh_runs_command;
mod sshd_harness;
mod sso_login;
mod static_binary;
mod step_up;
mod store_off_the_loop;
mod trace_logs_keep_secrets;
mod tunnel_dns_off_the_loop;
mod tunnel_sigterm_drain;
mod zone_boundaries;
mod zone_login;

/// A file in `tests/` that is not a module above is never built (`autotests = false`): its
/// tests would silently stop running. This one fails instead, naming it.
#[test]
fn every_test_file_is_a_module_of_this_crate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let listed: Vec<&str> = include_str!("e2e.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read tests/") {
        let name = entry.expect("tests/ entry").file_name();
        let name = name.to_string_lossy();
        if let Some(module) = name.strip_suffix(".rs") {
            if module != "e2e" && !listed.contains(&module) {
                missing.push(module.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "tests/{{{}}}.rs: not listed in tests/e2e.rs, so never built",
        missing.join(",")
    );
}
