//! Test fixtures: a real `dbus-daemon` on a private socket, a mock polkit authority on it, a
//! fake host tree (cgroupfs, sysfs, procfs) in a temp dir, and the real `kvmisolated` binary
//! started against both.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/support/bus.rs"]
mod bus;
pub use bus::TestBus;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::names::BusName;
use zbus::{Connection, OwnedVariant, interface};

/// A fake host: cgroup v2 root, sysfs CPU files and a proc tree, with `ncpus` CPUs online.
pub struct FakeHost {
    pub dir: tempfile::TempDir,
}

impl FakeHost {
    pub fn new(ncpus: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmisolate-host")
            .tempdir()
            .unwrap();
        let h = Self { dir };
        let all = if ncpus == 1 {
            "0".to_owned()
        } else {
            format!("0-{}", ncpus - 1)
        };
        let cpu = h.sys().join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        for f in ["present", "online", "possible"] {
            std::fs::write(cpu.join(f), format!("{all}\n")).unwrap();
        }
        let cg = h.cgroup();
        std::fs::create_dir_all(&cg).unwrap();
        for (f, v) in [
            (
                "cgroup.controllers",
                "cpuset cpu io memory hugetlb pids rdma misc\n".to_owned(),
            ),
            ("cgroup.subtree_control", "memory pids\n".to_owned()),
            ("cgroup.procs", "1\n".to_owned()),
            ("cpuset.cpus.effective", format!("{all}\n")),
            ("cpuset.mems.effective", "0\n".to_owned()),
            ("cpuset.cpus.isolated", "\n".to_owned()),
        ] {
            std::fs::write(cg.join(f), v).unwrap();
        }
        std::fs::create_dir_all(h.proc().join("1")).unwrap();
        std::fs::write(h.proc().join("1/cgroup"), "0::/init.scope\n").unwrap();
        h
    }

    pub fn cgroup(&self) -> PathBuf {
        self.dir.path().join("cgroup")
    }
    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    pub fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }
    /// The daemon's configuration file (absent unless a test writes it).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("kvmisolate.toml")
    }
    /// Writes `text` to `rel` below the host tree (creating directories).
    pub fn put(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    /// The content of `rel` below the host tree.
    pub fn get(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).unwrap()
    }
    pub fn run(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Makes a fake process `pid` of root living in cgroup `cg` (relative).
    pub fn add_process(&self, pid: u32, cg: &str) {
        self.add_process_of(pid, cg, 0);
    }

    /// Makes a fake process `pid` of `uid` living in cgroup `cg` (relative).
    pub fn add_process_of(&self, pid: u32, cg: &str, uid: u32) {
        let p = self.proc().join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("cgroup"), format!("0::/{cg}\n")).unwrap();
        std::fs::write(
            p.join("status"),
            format!(
                "Name:\tfake\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            ),
        )
        .unwrap();
        let dir = self.cgroup().join(cg);
        std::fs::create_dir_all(&dir).unwrap();
        // Every cgroup on the way gets the core files a kernel would show.
        let mut d = dir.clone();
        while d != self.cgroup() {
            let parent = d.parent().unwrap().to_owned();
            let inherited =
                std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
            for (f, v) in [
                ("cgroup.subtree_control", ""),
                ("cgroup.controllers", inherited.as_str()),
                ("cgroup.procs", ""),
            ] {
                if !d.join(f).exists() {
                    std::fs::write(d.join(f), v).unwrap();
                }
            }
            d = parent;
        }
        let procs = dir.join("cgroup.procs");
        let mut text = std::fs::read_to_string(&procs).unwrap_or_default();
        text.push_str(&format!("{pid}\n"));
        std::fs::write(&procs, text).unwrap();
        let events = dir.join("cgroup.events");
        if !events.exists() {
            std::fs::write(events, "populated 1\nfrozen 0\n").unwrap();
        }
    }

    /// Every regular file below the cgroup root with its content: the "snapshot" a test
    /// compares before and after.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.path());
            for e in entries {
                let p = e.path();
                if p.is_dir() {
                    out.push((
                        p.strip_prefix(base).unwrap().display().to_string() + "/",
                        String::new(),
                    ));
                    walk(base, &p, out);
                } else {
                    let content = std::fs::read_to_string(&p).unwrap_or_default();
                    out.push((p.strip_prefix(base).unwrap().display().to_string(), content));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.cgroup(), &self.cgroup(), &mut out);
        out
    }
}

/// What the mock authority answers.
#[derive(Clone, Debug, Default)]
pub struct PolkitPolicy {
    /// uid → (authorized, challenge), for every action not in `per_action`.
    pub answers: HashMap<u32, (bool, bool)>,
    /// (uid, action) → (authorized, challenge): what a rule on one action would say.
    pub per_action: HashMap<(u32, String), (bool, bool)>,
    /// How long each answer takes (a person typing a password).
    pub delay: Option<Duration>,
}

/// One CheckAuthorization call the mock saw.
#[derive(Clone, Debug)]
pub struct PolkitCall {
    pub subject_kind: String,
    pub uid: u32,
    pub action: String,
    pub flags: u32,
    pub details: HashMap<String, String>,
}

/// `org.freedesktop.PolicyKit1.Authority` for tests.
pub struct MockAuthority {
    pub policy: Arc<Mutex<PolkitPolicy>>,
    pub calls: Arc<Mutex<Vec<PolkitCall>>>,
    pub conn: Connection,
}

type Subject = (String, HashMap<String, OwnedVariant>);

#[interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl MockAuthority {
    async fn check_authorization(
        &self,
        subject: Subject,
        action_id: String,
        details_in: HashMap<String, String>,
        flags: u32,
        _cancellation_id: String,
    ) -> zbus::fdo::Result<(bool, bool, HashMap<String, String>)> {
        let (kind, details) = subject;
        let name = details
            .get("name")
            .and_then(|v| String::try_from(v.clone()).ok())
            .unwrap_or_default();
        let dbus = zbus::fdo::DBusProxy::new(&self.conn).await?;
        let uid = match BusName::try_from(name.as_str()) {
            Ok(bus_name) => dbus
                .get_connection_unix_user(bus_name)
                .await
                .unwrap_or(u32::MAX),
            Err(_) => u32::MAX,
        };
        self.calls.lock().unwrap().push(PolkitCall {
            subject_kind: kind,
            uid,
            action: action_id.clone(),
            flags,
            details: details_in,
        });
        let ((ok, challenge), delay) = {
            let policy = self.policy.lock().unwrap();
            (
                policy
                    .per_action
                    .get(&(uid, action_id))
                    .or_else(|| policy.answers.get(&uid))
                    .copied()
                    .unwrap_or((false, false)),
                policy.delay,
            )
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        Ok((ok, challenge, HashMap::new()))
    }
}

/// Serves the mock authority on `bus` under `org.freedesktop.PolicyKit1`.
pub async fn start_mock_polkit(
    bus: &TestBus,
) -> (
    Connection,
    Arc<Mutex<PolkitPolicy>>,
    Arc<Mutex<Vec<PolkitCall>>>,
) {
    let conn = bus.connect().await;
    let policy = Arc::new(Mutex::new(PolkitPolicy::default()));
    let calls = Arc::new(Mutex::new(Vec::new()));
    conn.object_server()
        .at(
            "/org/freedesktop/PolicyKit1/Authority",
            MockAuthority {
                policy: policy.clone(),
                calls: calls.clone(),
                conn: conn.clone(),
            },
        )
        .await
        .unwrap();
    conn.request_name("org.freedesktop.PolicyKit1")
        .await
        .unwrap();
    (conn, policy, calls)
}

/// The real daemon, started against a bus and a fake host. Killed on drop.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn start(bus: &TestBus, host: &FakeHost, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(bus, host, extra_env, &[])
    }

    pub fn start_with(
        bus: &TestBus,
        host: &FakeHost,
        extra_env: &[(&str, &str)],
        extra_args: &[&str],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvmisolated"));
        cmd.arg("--address")
            .arg(&bus.address)
            .arg("--cgroup-root")
            .arg(host.cgroup())
            .arg("--sysfs-root")
            .arg(host.sys())
            .arg("--proc-root")
            .arg(host.proc())
            .arg("--run-dir")
            .arg(host.run())
            // The host's own /etc/kvmisolate must not change a test; a test writes this file
            // before starting the daemon when it wants a configuration.
            .arg("--config")
            .arg(host.config_path())
            .arg("--systemd-runtime-dir")
            .arg(host.run().join("systemd"))
            .arg("--no-systemd")
            .arg("--test-fake-kernel")
            .env("KVMISOLATED_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !extra_args.contains(&"--idle-timeout") {
            cmd.args(["--idle-timeout", "0"]);
        }
        cmd.args(extra_args);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("spawning kvmisolated"),
        }
    }

    /// Waits until the daemon owns its name on `conn`'s bus.
    pub async fn wait_ready(&mut self, conn: &Connection) {
        let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let name = BusName::try_from(kvmisolate_dbus::names::BUS_NAME).unwrap();
            if dbus.name_has_owner(name).await.unwrap_or(false) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kvmisolated exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "kvmisolated did not take its name"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `kvmisolate` CLI binary next to the daemon's.
pub fn cli_path() -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_kvmisolated"));
    let cli = daemon.with_file_name("kvmisolate");
    assert!(
        cli.exists(),
        "{} is missing: build the workspace (cargo build --workspace) first",
        cli.display()
    );
    cli
}

/// Runs the CLI as `uid` against the bus at `address` (for a thread of its own).
pub fn run_cli_at(uid: u32, address: &str, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(cli_path())
        .uid(uid)
        .gid(uid)
        .arg("--address")
        .arg(address)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs the CLI as `uid` against `bus`.
pub fn run_cli_as(uid: u32, bus: &TestBus, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(cli_path())
        .uid(uid)
        .gid(uid)
        .arg("--address")
        .arg(&bus.address)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
