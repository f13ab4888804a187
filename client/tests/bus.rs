//! The built `kvmisolate` binary against a mock `org.kvmisolate.Isolator1` served on a private
//! `dbus-daemon` (tests/support/bus.rs).

// Test code: a panic is the failure report (clippy.toml allows this only inside #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmisolate_dbus::status::{IsolationEntry, KernelSupport, Status, TuningRow};
use kvmisolate_dbus::{Error as ContractError, IsolationName, names, options};
use tokio::io::AsyncBufReadExt as _;
use zbus::message::{Flags, Header};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, DBusError, OwnedObjectPath, OwnedVariant, fdo, interface};

const BIN: &str = env!("CARGO_BIN_EXE_kvmisolate");

#[path = "../../tests/support/bus.rs"]
mod support_bus;
use support_bus::TestBus as Bus;

/// One call the mock received.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    name: String,
    cpus: String,
    options: HashMap<String, OwnedVariant>,
    interactive: bool,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// Either a contract error or a standard one.
#[derive(Debug)]
enum MockError {
    Contract(ContractError),
    Fdo(fdo::Error),
}

impl DBusError for MockError {
    fn create_reply(&self, msg: &Header<'_>) -> zbus::Result<zbus::Message> {
        match self {
            Self::Contract(e) => e.create_reply(msg),
            Self::Fdo(e) => e.create_reply(msg),
        }
    }
    fn name(&self) -> zbus::names::ErrorName<'_> {
        match self {
            Self::Contract(e) => e.name(),
            Self::Fdo(e) => e.name(),
        }
    }
    fn description(&self) -> Option<&str> {
        match self {
            Self::Contract(e) => e.description(),
            Self::Fdo(e) => e.description(),
        }
    }
}

impl From<zbus::Error> for MockError {
    fn from(e: zbus::Error) -> Self {
        Self::Fdo(fdo::Error::from(e))
    }
}

fn interactive(h: &Header<'_>) -> bool {
    h.primary().flags().contains(Flags::ALLOW_INTERACTIVE_AUTH)
}

struct MockIsolator {
    calls: Calls,
    isolated: String,
    /// The state of "win10" in Status() (`active` unless a test says otherwise).
    state: &'static str,
}

struct MockIsolation {
    name: String,
    cpus: String,
    partition: String,
    target: String,
}

#[interface(name = "org.kvmisolate.Isolation1")]
impl MockIsolation {
    #[zbus(property)]
    fn name(&self) -> String {
        self.name.clone()
    }
    #[zbus(property)]
    fn cpus(&self) -> String {
        self.cpus.clone()
    }
    #[zbus(property)]
    fn partition(&self) -> String {
        self.partition.clone()
    }
    #[zbus(property)]
    fn target(&self) -> String {
        self.target.clone()
    }
}

fn str_option(options: &HashMap<String, OwnedVariant>, key: &str) -> Option<String> {
    options
        .get(key)
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
}

#[interface(name = "org.kvmisolate.Isolator1")]
impl MockIsolator {
    async fn isolate(
        &mut self,
        name: String,
        cpus: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, MockError> {
        let interactive = interactive(&header);
        match name.as_str() {
            "denied" => {
                return Err(MockError::Fdo(fdo::Error::AccessDenied(
                    "polkit said no".into(),
                )));
            }
            "needauth" if !interactive => {
                return Err(MockError::Fdo(
                    fdo::Error::InteractiveAuthorizationRequired(
                        "Interactive authentication required.".into(),
                    ),
                ));
            }
            "busy" => {
                return Err(MockError::Contract(ContractError::CpusBusy(
                    "CPUs 2-3 are held by the isolation \"other\"".into(),
                )));
            }
            "rejected" => {
                return Err(MockError::Contract(ContractError::PartitionRejected(
                    "the kernel made the partition invalid: Cpu list in cpuset.cpus not exclusive"
                        .into(),
                )));
            }
            _ => {}
        }
        self.calls.lock().unwrap().push(Call {
            method: "Isolate".into(),
            name: name.clone(),
            cpus: cpus.clone(),
            options: options
                .iter()
                .map(|(k, v)| (k.clone(), v.try_clone().unwrap()))
                .collect(),
            interactive,
        });
        let target = if let Some(unit) = str_option(&options, options::UNIT) {
            format!("unit:{unit}")
        } else {
            let pids: Vec<u32> = options
                .get(options::PIDS)
                .and_then(|v| Vec::<u32>::try_from(v.try_clone().ok()?).ok())
                .unwrap_or_default();
            format!(
                "pids:{}",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let path = IsolationName::new(&name).unwrap().object_path();
        server
            .at(
                path.as_str(),
                MockIsolation {
                    name,
                    cpus: cpus.clone(),
                    partition: str_option(&options, options::PARTITION)
                        .unwrap_or_else(|| "root".into()),
                    target,
                },
            )
            .await?;
        self.isolated = cpus;
        self.isolated_cpus_changed(&emitter).await?;
        Ok(OwnedObjectPath::try_from(path).unwrap())
    }

    async fn release(
        &mut self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), MockError> {
        match name.as_str() {
            "missing" => Err(MockError::Contract(ContractError::NoSuchIsolation(
                "there is no isolation named \"missing\"".into(),
            ))),
            "denied" => Err(MockError::Fdo(fdo::Error::AccessDenied(
                "polkit said no".into(),
            ))),
            _ => {
                self.calls.lock().unwrap().push(Call {
                    method: "Release".into(),
                    name: name.clone(),
                    cpus: String::new(),
                    options: HashMap::new(),
                    interactive: interactive(&header),
                });
                let path = IsolationName::new(&name).unwrap().object_path();
                let _ = server.remove::<MockIsolation, _>(path.as_str()).await;
                let path = zbus::ObjectPath::try_from(path.as_str()).unwrap();
                Self::released(&emitter, &name, path, "released").await?;
                Ok(())
            }
        }
    }

    async fn release_all(&mut self, #[zbus(header)] header: Header<'_>) {
        self.calls.lock().unwrap().push(Call {
            method: "ReleaseAll".into(),
            name: String::new(),
            cpus: String::new(),
            options: HashMap::new(),
            interactive: interactive(&header),
        });
    }

    /// A reply with every key, as the service sends it (from the same typed contract).
    fn status(&self) -> Status {
        let active = self.state == "active";
        let iso = IsolationEntry {
            name: "win10".into(),
            object_path: OwnedObjectPath::try_from("/org/kvmisolate/Isolator1/isolation/win10")
                .unwrap(),
            cpus: "2-3".into(),
            target: "pids:1234".into(),
            partition: "isolated".into(),
            description: "CPUs 2-3 for pids 1234".into(),
            state: self.state.into(),
            state_reason: if active {
                String::new()
            } else {
                "the kernel invalidated the partition: cpus offline".into()
            },
            owner_uid: 1000,
            created: 1,
            release_when: "target-exits".into(),
            cgroups: vec!["kvmisolate.slice/win10".into()],
            profile: "custom".into(),
            tunings: vec![TuningRow {
                name: "irq-affinity".into(),
                state: if active { "applied" } else { "failed" }.into(),
                reason: String::new(),
                original: "0-3".into(),
                current: "0-1".into(),
            }],
            warnings: Vec::new(),
            irqs_left: None,
        };
        Status {
            version: "0.1.0".into(),
            isolated_cpus: "2-3".into(),
            housekeeping_cpus: "0-1".into(),
            online_cpus: "0-3".into(),
            kernel_support: KernelSupport {
                cgroup_v2: true,
                partition_types: vec!["root".into(), "isolated".into()],
                remote_partitions: true,
                files: vec!["cpuset.cpus.exclusive".into()],
                kernel_release: "6.12.0".into(),
                systemd: true,
                problems: Vec::new(),
            },
            isolations: vec![iso],
            warnings: vec!["a warning".into()],
        }
    }

    #[zbus(signal)]
    async fn released(
        emitter: &SignalEmitter<'_>,
        name: &str,
        path: zbus::ObjectPath<'_>,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(property)]
    fn isolated_cpus(&self) -> String {
        self.isolated.clone()
    }
}

/// Serves the mock on `bus`; keep the connection alive for the test.
async fn serve(bus: &Bus) -> (Connection, Calls) {
    serve_with_state(bus, "active").await
}

/// Serves the mock with "win10" in `state`.
async fn serve_with_state(bus: &Bus, state: &'static str) -> (Connection, Calls) {
    let calls = Calls::default();
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .serve_at(names::OBJECT_PATH, fdo::ObjectManager)
        .serve_at(
            names::OBJECT_PATH,
            MockIsolator {
                calls: calls.clone(),
                isolated: String::new(),
                state,
            },
        )
        .name(names::BUS_NAME)
        .build()
        .await
        .unwrap();
    (conn, calls)
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(bus: &Bus, args: &[&str]) -> Output {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .arg("--address")
            .arg(&bus.address)
            .args(args)
            .env_remove("KVMISOLATE_BUS_ADDRESS")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("kvmisolate hung")
    .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn isolate_success_and_flags() {
    let bus = Bus::start();
    let (_conn, calls) = serve(&bus).await;

    let out = cli(
        &bus,
        &[
            "isolate",
            "--cpus",
            "2-3",
            "--name",
            "win10",
            "--pid",
            "1234",
            "--partition",
            "isolated",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "Isolated CPUs 2-3 as \"win10\" (partition isolated, pids 1234)\n"
    );
    {
        let calls = calls.lock().unwrap();
        let c = calls.last().unwrap();
        assert_eq!(
            (c.method.as_str(), c.name.as_str(), c.cpus.as_str()),
            ("Isolate", "win10", "2-3")
        );
        assert!(
            c.interactive,
            "ALLOW_INTERACTIVE_AUTHORIZATION must be set by default"
        );
        assert_eq!(
            Vec::<u32>::try_from(c.options[options::PIDS].try_clone().unwrap()).unwrap(),
            [1234]
        );
        assert_eq!(
            str_option(&c.options, options::PARTITION).as_deref(),
            Some("isolated")
        );
        assert!(!c.options.contains_key(options::RELEASE_WHEN));
    }

    // Default name, unit target, --until, --no-ask-password, -q.
    let out = cli(
        &bus,
        &[
            "--no-ask-password",
            "-q",
            "isolate",
            "--cpus",
            "4,6",
            "--unit",
            "vm.scope",
            "--until",
            "release",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let calls = calls.lock().unwrap();
    let c = calls.last().unwrap();
    assert_eq!(c.name, "cpus-4_6");
    assert!(!c.interactive, "--no-ask-password clears the flag");
    assert_eq!(
        str_option(&c.options, options::UNIT).as_deref(),
        Some("vm.scope")
    );
    assert_eq!(
        str_option(&c.options, options::RELEASE_WHEN).as_deref(),
        Some("released")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_map_to_exit_codes() {
    let bus = Bus::start();
    let (_conn, _calls) = serve(&bus).await;

    let out = cli(&bus, &["release", "denied"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "kvmisolate: not authorized (org.freedesktop.DBus.Error.AccessDenied): polkit said no"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("50-kvmisolate.rules.example"),
        "{}",
        out.stderr
    );

    let out = cli(
        &bus,
        &["isolate", "--cpus", "2", "--name", "denied", "--pid", "1"],
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);

    let out = cli(
        &bus,
        &[
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--name",
            "needauth",
            "--pid",
            "1",
        ],
    )
    .await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.contains("--no-ask-password"), "{}", out.stderr);

    let out = cli(&bus, &["release", "missing"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("no isolation named \"missing\""),
        "{}",
        out.stderr
    );

    let out = cli(
        &bus,
        &["isolate", "--cpus", "2-3", "--name", "busy", "--pid", "1"],
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("held by the isolation \"other\""),
        "{}",
        out.stderr
    );

    let out = cli(
        &bus,
        &[
            "isolate", "--cpus", "2-3", "--name", "rejected", "--pid", "1",
        ],
    )
    .await;
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("not exclusive"), "{}", out.stderr);

    // Local validation: no bus round trip needed, same exit code as the service's.
    let out = cli(&bus, &["isolate", "--cpus", "1,,2", "--pid", "1"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = cli(
        &bus,
        &["isolate", "--cpus", "2", "--name", "../x", "--pid", "1"],
    )
    .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let out = cli(&bus, &["isolate", "--cpus", "2"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("kvmisolate run"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_service() {
    let bus = Bus::start();
    // Nobody owns org.kvmisolate.Isolator1 on this bus.
    let out = cli(&bus, &["status"]).await;
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach kvmisolated"),
        "{}",
        out.stderr
    );
    let out = cli(&bus, &["release", "x"]).await;
    assert_eq!(out.code, 7, "{}", out.stderr);

    // No bus at all.
    let out = tokio::process::Command::new(BIN)
        .args(["--address", "unix:path=/nonexistent/bus", "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    // The environment variable works like --address.
    let out = tokio::process::Command::new(BIN)
        .arg("status")
        .env("KVMISOLATE_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bus"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_release() {
    let bus = Bus::start();
    let (_conn, calls) = serve(&bus).await;

    let out = cli(&bus, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["isolated-cpus"], "2-3");
    assert_eq!(json["isolations"][0]["name"], "win10");
    assert_eq!(json["isolations"][0]["owner-uid"], 1000);
    assert_eq!(
        json["isolations"][0]["object-path"],
        "/org/kvmisolate/Isolator1/isolation/win10"
    );
    assert_eq!(json["warnings"][0], "a warning");

    let out = cli(&bus, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("1 isolation: CPUs 2-3 isolated, host keeps 0-1\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("win10  2-3"), "{}", out.stdout);

    let out = cli(&bus, &["release", "win10"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "Released \"win10\"\n");
    let out = cli(&bus, &["--no-ask-password", "release", "--all"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = calls.lock().unwrap();
    let methods: Vec<(&str, &str, bool)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.name.as_str(), c.interactive))
        .collect();
    assert_eq!(
        methods,
        [("Release", "win10", true), ("ReleaseAll", "", false)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_execs_in_place() {
    let bus = Bus::start();
    let (_conn, calls) = serve(&bus).await;

    let out = cli(
        &bus,
        &[
            "run", "--cpus", "2-3", "--name", "runner", "--", "sh", "-c", "echo $$",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("Isolated CPUs 2-3 as \"runner\""),
        "{}",
        out.stderr
    );
    let shell_pid: u32 = out.stdout.trim().parse().unwrap();
    {
        let calls = calls.lock().unwrap();
        let c = calls.last().unwrap();
        let pids = Vec::<u32>::try_from(c.options[options::PIDS].try_clone().unwrap()).unwrap();
        assert_eq!(
            pids,
            [shell_pid],
            "the command runs as the process that was isolated"
        );
        assert_eq!(
            str_option(&c.options, options::RELEASE_WHEN).as_deref(),
            Some("target-exits")
        );
    }

    let out = cli(
        &bus,
        &[
            "run",
            "--cpus",
            "2",
            "--name",
            "runfail",
            "--",
            "/nonexistent/command",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot run /nonexistent/command"),
        "{}",
        out.stderr
    );
    let calls = calls.lock().unwrap();
    let last = calls.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.name.as_str()),
        ("Release", "runfail")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn until_disconnect_holds_until_signalled() {
    let bus = Bus::start();
    let (_conn, calls) = serve(&bus).await;

    let mut child = tokio::process::Command::new(BIN)
        .args(["--address", &bus.address])
        .args([
            "isolate",
            "--cpus",
            "2",
            "--name",
            "lease",
            "--pid",
            "1",
            "--until",
            "disconnect",
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.starts_with("Isolated CPUs 2 as \"lease\""), "{first}");
    // Still running, holding the lease.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(child.try_wait().unwrap().is_none());
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let calls = calls.lock().unwrap();
    let names: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(names, [("Isolate", "lease"), ("Release", "lease")]);
    assert_eq!(
        str_option(&calls[0].options, options::RELEASE_WHEN).as_deref(),
        Some("caller-disconnects")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_prints_changes() {
    let bus = Bus::start();

    let mut child = tokio::process::Command::new(BIN)
        .args(["--address", &bus.address, "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), err.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ready.starts_with("Watching"), "{ready}");
    // The service appears after the monitor started.
    let (conn, _calls) = serve(&bus).await;

    let out = cli(
        &bus,
        &["isolate", "--cpus", "2-3", "--name", "vm-1", "--pid", "1"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cli(&bus, &["release", "vm-1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("only got {seen:?}"))
            .unwrap()
            .unwrap();
        // Drop the timestamp.
        seen.push(line.split_once(' ').unwrap().1.to_owned());
    }
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        seen.iter().any(|l| l.starts_with("vm-1: added ")),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"isolator: IsolatedCpus=2-3".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"vm-1: released (released)".to_owned()),
        "{seen:?}"
    );
    assert!(seen.contains(&"vm-1: removed".to_owned()), "{seen:?}");
    assert_eq!(seen[0], "service: started", "{seen:?}");
    drop(conn);
}

/// A fake host for `check`: 4 CPUs, cgroup v2 with cpuset, no partition.
fn check_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("sys/devices/system/cpu/online", "0-3\n");
    w("cgroup/cgroup.controllers", "cpuset cpu memory pids\n");
    w("cgroup/cgroup.subtree_control", "cpuset cpu memory pids\n");
    w("cgroup/cpuset.cpus.effective", "0-3\n");
    w("proc/cmdline", "root=/dev/vda\n");
    dir
}

async fn check_json(bus: &Bus, tree: &tempfile::TempDir) -> (i32, serde_json::Value) {
    let root = |d: &str| tree.path().join(d).display().to_string();
    let out = cli(
        bus,
        &[
            "check",
            "--json",
            "--proc-root",
            &root("proc"),
            "--sysfs-root",
            &root("sys"),
            "--cgroup-root",
            &root("cgroup"),
        ],
    )
    .await;
    let json = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", out.stdout, out.stderr));
    (out.code, json)
}

fn finding<'a>(j: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {j:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reads_the_daemon() {
    let bus = Bus::start();
    let tree = check_tree();
    // Nobody on the bus: an info, the audit goes on from cgroupfs alone.
    let (code, j) = check_json(&bus, &tree).await;
    assert_eq!(finding(&j, "daemon")["severity"], "info", "{j:#}");
    assert!(
        finding(&j, "daemon")["found"]
            .as_str()
            .unwrap()
            .contains("only cgroupfs was audited")
    );
    assert_eq!(j["cpus-source"], "none");
    assert_eq!(code, 0, "{j:#}");

    // The daemon's isolation gives the audited CPUs; active: fine.
    let (conn, _) = serve(&bus).await;
    let (_, j) = check_json(&bus, &tree).await;
    assert_eq!(finding(&j, "daemon-isolations")["severity"], "ok", "{j:#}");
    assert_eq!(j["cpus"], "2-3");
    assert_eq!(j["cpus-source"], "partitions");
    assert!(
        j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["id"] != "daemon-tunings")
    );
    drop(conn);

    // Degraded, with a tuning that failed: an error naming the reason, and a warning.
    let (_conn, _) = serve_with_state(&bus, "degraded").await;
    let (code, j) = check_json(&bus, &tree).await;
    let f = finding(&j, "daemon-isolations");
    assert_eq!(f["severity"], "error", "{j:#}");
    assert_eq!(
        f["details"][0],
        "win10 (CPUs 2-3): degraded: the kernel invalidated the partition: cpus offline"
    );
    assert_eq!(finding(&j, "daemon-tunings")["severity"], "warning");
    assert_eq!(code, 9);
}
