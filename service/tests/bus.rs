//! Bus tests: the real `kvmisolated` binary on a real `dbus-daemon` (private socket), with a
//! mock polkit authority on the same bus and a fake host tree. Kernel behaviour is the VM
//! suite's job (tests/vm); these prove the D-Bus contract: methods, properties, signals, error
//! names, hostile input, authorization decisions, concurrency and crash recovery.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{Daemon, FakeHost, TestBus, run_cli_as, start_mock_polkit};
use futures_util::StreamExt;
use kvmisolate_dbus::error::name as ename;
use kvmisolate_dbus::proxy::{Isolation1Proxy, Isolator1Proxy};
use kvmisolate_dbus::{names, status as keys};
use zbus::{Connection, OwnedVariant, Variant};

const NOBODY: u32 = 65534;

struct Env {
    bus: TestBus,
    host: FakeHost,
    _daemon: Daemon,
    conn: Connection,
}

async fn env_with(extra_env: &[(&str, &str)], extra_args: &[&str]) -> Env {
    env_full(extra_env, extra_args, |_| {}).await
}

/// An environment whose host tree `prepare` completes before the daemon starts.
async fn env_full(
    extra_env: &[(&str, &str)],
    extra_args: &[&str],
    prepare: impl FnOnce(&FakeHost),
) -> Env {
    let bus = TestBus::start();
    let host = FakeHost::new(6);
    prepare(&host);
    // 4242 is the unprivileged test user's (NOBODY), the others root's.
    host.add_process_of(4242, "user.slice/session-1.scope", NOBODY);
    for pid in [4243, 4244, 4245] {
        host.add_process(pid, "user.slice/session-1.scope");
    }
    let conn = bus.connect().await;
    let mut daemon = Daemon::start_with(&bus, &host, extra_env, extra_args);
    daemon.wait_ready(&conn).await;
    Env {
        bus,
        host,
        _daemon: daemon,
        conn,
    }
}

async fn env() -> Env {
    env_with(&[], &[]).await
}

fn pids(p: &[u32]) -> HashMap<&'static str, Variant<'static>> {
    HashMap::from([("pids", Variant::from(p.to_vec()))])
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        zbus::Error::FDO(e) => {
            use zbus::DBusError;
            e.name().to_string()
        }
        other => format!("not a method error: {other:?}"),
    }
}

fn text(v: &OwnedVariant) -> String {
    String::try_from(v.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_status_release_roundtrip() {
    let e = env().await;
    let before = e.host.snapshot();
    // Uncached: each read below asks the service, so no signal race hides a stale value.
    let proxy = Isolator1Proxy::builder(&e.conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();

    let path = proxy.isolate("win10", "2-3", pids(&[4242])).await.unwrap();
    assert_eq!(path.as_str(), "/org/kvmisolate/Isolator1/isolation/win10");

    let iso = Isolation1Proxy::builder(&e.conn)
        .path(path.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(iso.name().await.unwrap(), "win10");
    assert_eq!(iso.cpus().await.unwrap(), "2-3");
    assert_eq!(iso.target().await.unwrap(), "pids:4242");
    assert_eq!(
        iso.partition().await.unwrap(),
        "root",
        "multi-CPU unpinned target defaults to root"
    );
    assert_eq!(iso.state().await.unwrap(), "active");
    assert_eq!(iso.state_reason().await.unwrap(), "");
    assert_eq!(iso.owner_uid().await.unwrap(), 0);
    assert_eq!(iso.release_when().await.unwrap(), "target-exits");
    assert!(iso.created().await.unwrap() > 1_600_000_000_000_000);

    assert_eq!(proxy.isolated_cpus().await.unwrap(), "2-3");
    assert_eq!(proxy.housekeeping_cpus().await.unwrap(), "0-1,4-5");
    assert_eq!(proxy.isolations().await.unwrap(), vec![path.clone()]);
    let ks = proxy.kernel_support().await.unwrap();
    assert!(bool::try_from(ks[keys::K_CGROUP_V2].clone()).unwrap());

    let status = proxy.status().await.unwrap();
    assert_eq!(text(&status[keys::ISOLATED_CPUS]), "2-3");
    assert_eq!(text(&status[keys::HOUSEKEEPING_CPUS]), "0-1,4-5");
    assert_eq!(text(&status[keys::ONLINE_CPUS]), "0-5");
    let list =
        Vec::<HashMap<String, OwnedVariant>>::try_from(status[keys::ISOLATIONS].clone()).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(text(&list[0][keys::I_NAME]), "win10");
    assert_eq!(text(&list[0][keys::I_STATE]), "active");
    let cgroups = Vec::<String>::try_from(list[0][keys::I_CGROUPS].clone()).unwrap();
    assert_eq!(cgroups.len(), 1);
    // The partition really was written (the fake kernel echoes valid writes).
    let part = std::fs::read_to_string(
        e.host
            .cgroup()
            .join(&cgroups[0])
            .join("cpuset.cpus.partition"),
    )
    .unwrap();
    assert_eq!(part.trim(), "root");
    assert_ne!(e.host.snapshot(), before);

    proxy.release("win10").await.unwrap();
    assert_eq!(
        e.host.snapshot(),
        before,
        "release must restore every file byte for byte"
    );
    assert!(proxy.isolations().await.unwrap().is_empty());
    assert_eq!(proxy.isolated_cpus().await.unwrap(), "");
    let uncached = Isolation1Proxy::builder(&e.conn)
        .path(path.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert!(
        uncached.name().await.is_err(),
        "the object is gone after release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_follow_every_change() {
    let e = env().await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let om = zbus::fdo::ObjectManagerProxy::builder(&e.conn)
        .destination(names::BUS_NAME)
        .path(names::OBJECT_PATH)
        .build()
        .await
        .unwrap();
    let mut added = om.receive_interfaces_added().await.unwrap();
    let mut removed = om.receive_interfaces_removed().await.unwrap();
    let mut isolations_changed = proxy.receive_isolations_changed().await;
    let mut released = proxy.receive_released().await.unwrap();
    // The first item of a property stream is the current value.
    let first = isolations_changed
        .next()
        .await
        .unwrap()
        .get()
        .await
        .unwrap();
    assert!(first.is_empty());

    let path = proxy.isolate("sig", "4", pids(&[4243])).await.unwrap();
    let t = Duration::from_secs(10);
    let a = tokio::time::timeout(t, added.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.args().unwrap().object_path().as_str(), path.as_str());
    let changed = tokio::time::timeout(t, isolations_changed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.get().await.unwrap(), vec![path.clone()]);

    proxy.release("sig").await.unwrap();
    let r = tokio::time::timeout(t, released.next())
        .await
        .unwrap()
        .unwrap();
    let args = r.args().unwrap();
    assert_eq!(*args.name(), "sig");
    assert_eq!(*args.reason(), "released");
    let rm = tokio::time::timeout(t, removed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rm.args().unwrap().object_path().as_str(), path.as_str());
    let changed = tokio::time::timeout(t, isolations_changed.next())
        .await
        .unwrap()
        .unwrap();
    assert!(changed.get().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_name_and_changes_nothing() {
    let e = env_with(&[], &["--min-housekeeping", "2"]).await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    proxy.isolate("held", "4", pids(&[4242])).await.unwrap();
    let before = e.host.snapshot();

    let cases: Vec<(&str, &str, HashMap<&str, Variant<'_>>, &str)> = vec![
        ("bad-list", "5-2", pids(&[4243]), ename::INVALID_CPU_LIST),
        ("empty-list", "", pids(&[4243]), ename::INVALID_CPU_LIST),
        ("absent-cpu", "9", pids(&[4243]), ename::CPU_NOT_AVAILABLE),
        ("busy", "3-4", pids(&[4243]), ename::CPUS_BUSY),
        (
            "too-many",
            "1-3,5",
            pids(&[4243]),
            ename::HOUSEKEEPING_TOO_SMALL,
        ),
        ("cpu0", "0", pids(&[4243]), ename::CPU_RESERVED),
        ("a/b", "2", pids(&[4243]), ename::INVALID_NAME),
        ("held", "2", pids(&[4243]), ename::NAME_EXISTS),
        ("ghost", "2", pids(&[999_999]), ename::TARGET_NOT_FOUND),
        (
            "opt",
            "2",
            HashMap::from([("bogus", Variant::from(1u32))]),
            ename::INVALID_OPTION,
        ),
    ];
    for (name, cpus, opts, expected) in cases {
        let err = proxy.isolate(name, cpus, opts).await.unwrap_err();
        assert_eq!(
            error_name(&err),
            expected,
            "Isolate({name:?}, {cpus:?}): {err}"
        );
        assert_eq!(
            e.host.snapshot(),
            before,
            "a refused Isolate({name:?}) changed the host"
        );
    }
    let err = proxy.release("nope").await.unwrap_err();
    assert_eq!(error_name(&err), ename::NO_SUCH_ISOLATION);
    proxy.release("held").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_host_is_named() {
    let bus = TestBus::start();
    let host = FakeHost::new(4);
    host.add_process(4242, "user.slice");
    // A hybrid/v1-style host: cpuset is not a v2 controller here.
    std::fs::write(
        host.cgroup().join("cgroup.controllers"),
        "cpu io memory pids\n",
    )
    .unwrap();
    let conn = bus.connect().await;
    let mut daemon = Daemon::start(&bus, &host, &[]);
    daemon.wait_ready(&conn).await;
    let proxy = Isolator1Proxy::new(&conn).await.unwrap();
    let err = proxy.isolate("x", "2", pids(&[4242])).await.unwrap_err();
    assert_eq!(error_name(&err), ename::UNSUPPORTED_HOST);
    assert!(
        err.to_string().contains("cpuset"),
        "the message must say what is missing: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_rejection_carries_the_reason_and_rolls_back() {
    let e = env_with(
        &[(
            "KVMISOLATED_TEST_FAKE_REJECT",
            "Cpu list in cpuset.cpus not exclusive",
        )],
        &[],
    )
    .await;
    let before = e.host.snapshot();
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let err = proxy
        .isolate("rej", "2-3", pids(&[4242]))
        .await
        .unwrap_err();
    assert_eq!(error_name(&err), ename::PARTITION_REJECTED);
    assert!(
        err.to_string()
            .contains("Cpu list in cpuset.cpus not exclusive"),
        "{err}"
    );
    eprintln!(
        "PROC4242: {:?}",
        std::fs::read_to_string(e.host.proc().join("4242/cgroup"))
    );
    assert_eq!(
        e.host.snapshot(),
        before,
        "a rejected partition must be rolled back completely"
    );
    assert!(proxy.isolations().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_arguments_get_clear_errors() {
    let e = env().await;
    let before = e.host.snapshot();
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();

    // Wrong types: the bus-level signature check answers InvalidArgs.
    let raw = e
        .conn
        .call_method(
            Some(names::BUS_NAME),
            names::OBJECT_PATH,
            Some(names::INTERFACE),
            "Isolate",
            &("a", "b", "c"),
        )
        .await
        .unwrap_err();
    assert!(error_name(&raw).contains("InvalidArgs"), "{raw}");

    let huge = "x".repeat(1 << 20);
    assert_eq!(
        error_name(&proxy.isolate(&huge, "2", pids(&[4242])).await.unwrap_err()),
        ename::INVALID_NAME
    );
    let huge_list = "1,".repeat(1 << 18);
    assert_eq!(
        error_name(
            &proxy
                .isolate("h", &huge_list, pids(&[4242]))
                .await
                .unwrap_err()
        ),
        ename::INVALID_CPU_LIST
    );
    let many: Vec<u32> = (1..=10_000).collect();
    let err = proxy.isolate("h", "2", pids(&many)).await.unwrap_err();
    assert_eq!(error_name(&err), ename::INVALID_OPTION);
    assert!(err.to_string().contains("10000"), "{err}");
    let wrong_type = HashMap::from([("pids", Variant::from("4242"))]);
    assert_eq!(
        error_name(&proxy.isolate("h", "2", wrong_type).await.unwrap_err()),
        ename::INVALID_OPTION
    );
    let huge_key = "k".repeat(100_000);
    let err = proxy
        .isolate(
            "h",
            "2",
            HashMap::from([(huge_key.as_str(), Variant::from(1u32))]),
        )
        .await
        .unwrap_err();
    assert_eq!(error_name(&err), ename::INVALID_OPTION);
    assert!(
        err.to_string().len() < 1000,
        "error messages must not echo huge input"
    );
    assert_eq!(e.host.snapshot(), before);
    assert!(proxy.isolations().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_decides_for_unprivileged_callers() {
    let e = env().await;
    let (_pk, policy, calls) = start_mock_polkit(&e.bus).await;
    let before = e.host.snapshot();

    // Denied outright.
    let out = run_cli_as(
        NOBODY,
        &e.bus,
        &[
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--pid",
            "4242",
            "--name",
            "n1",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDenied")
            || String::from_utf8_lossy(&out.stderr).contains("denied")
    );
    assert_eq!(e.host.snapshot(), before);
    {
        let calls = calls.lock().unwrap();
        let last = calls.last().expect("polkit was asked");
        assert_eq!(last.subject_kind, "system-bus-name");
        assert_eq!(last.uid, NOBODY);
        assert_eq!(last.action, "org.kvmisolate.isolate");
        assert_eq!(
            last.flags, 0,
            "--no-ask-password must not allow interaction"
        );
    }

    // Would need a password, but the caller did not allow interaction.
    policy.lock().unwrap().answers.insert(NOBODY, (false, true));
    let out = run_cli_as(
        NOBODY,
        &e.bus,
        &[
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--pid",
            "4242",
            "--name",
            "n1",
        ],
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InteractiveAuthorizationRequired")
            || String::from_utf8_lossy(&out.stderr).contains("authentication")
    );
    assert_eq!(e.host.snapshot(), before);

    // Granted (as a group rule would).
    policy.lock().unwrap().answers.insert(NOBODY, (true, false));
    let out = run_cli_as(
        NOBODY,
        &e.bus,
        &[
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--pid",
            "4242",
            "--name",
            "n1",
            "--until",
            "release",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(proxy.isolations().await.unwrap()[0].clone())
        .build()
        .await
        .unwrap();
    assert_eq!(iso.owner_uid().await.unwrap(), NOBODY);

    // Releasing one's own isolation asks polkit nothing, even when polkit would now say no.
    policy.lock().unwrap().answers.clear();
    let asked = calls.lock().unwrap().len();
    let out = run_cli_as(NOBODY, &e.bus, &["--no-ask-password", "release", "n1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(calls.lock().unwrap().len(), asked);
    assert_eq!(e.host.snapshot(), before);

    // Someone else's isolation needs org.kvmisolate.release.
    proxy.isolate("roots", "3", pids(&[4243])).await.unwrap();
    let out = run_cli_as(NOBODY, &e.bus, &["--no-ask-password", "release", "roots"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        calls.lock().unwrap().last().unwrap().action,
        "org.kvmisolate.release"
    );
    assert_eq!(proxy.isolations().await.unwrap().len(), 1);
    proxy.release("roots").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_unreachable_fails_closed() {
    let e = env().await; // no mock authority on this bus
    let before = e.host.snapshot();
    let out = run_cli_as(
        NOBODY,
        &e.bus,
        &[
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--pid",
            "4242",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(e.host.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_neither_deadlock_nor_leak() {
    let e = env().await;
    for pid in 5000..5050 {
        e.host.add_process(pid, "user.slice");
    }
    let before = e.host.snapshot();
    let address = e.bus.address.clone();
    let work = async {
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let address = address.clone();
            tasks.push(tokio::spawn(async move {
                let conn = zbus::connection::Builder::address(address.as_str())
                    .build()
                    .await
                    .unwrap();
                let proxy = Isolator1Proxy::new(&conn).await.unwrap();
                let cpu = 1 + i % 5;
                let name = format!("c{i}");
                let got = proxy
                    .isolate(&name, &cpu.to_string(), pids(&[5000 + i]))
                    .await;
                let _ = proxy.status().await.unwrap();
                match got {
                    Ok(_) => {
                        proxy.release(&name).await.unwrap();
                        true
                    }
                    Err(err) => {
                        assert_eq!(error_name(&err), ename::CPUS_BUSY, "{err}");
                        false
                    }
                }
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap() {
                ok += 1;
            }
        }
        ok
    };
    let ok = tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("deadlock: 50 clients did not finish");
    assert!(
        ok >= 5,
        "at least one client per CPU got its isolation ({ok})"
    );
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    assert!(
        proxy.isolations().await.unwrap().is_empty(),
        "leaked leases"
    );
    assert_eq!(e.host.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_disconnect_and_target_exit_release() {
    let e = env().await;
    let before = e.host.snapshot();
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    {
        let other = e.bus.connect().await;
        let p = Isolator1Proxy::new(&other).await.unwrap();
        let mut opts = pids(&[4244]);
        opts.insert("release-when", Variant::from("caller-disconnects"));
        p.isolate("leash", "5", opts).await.unwrap();
        assert_eq!(proxy.isolations().await.unwrap().len(), 1);
    }
    wait_until(|| async { proxy.isolations().await.unwrap().is_empty() }).await;
    assert_eq!(e.host.snapshot(), before);

    let path = proxy.isolate("exit", "2-3", pids(&[4242])).await.unwrap();
    let cg = first_partition(&proxy).await;
    // The fake kernel: the last process left the cgroup.
    std::fs::write(
        e.host.cgroup().join(&cg).join("cgroup.events"),
        "populated 0\nfrozen 0\n",
    )
    .unwrap();
    wait_until(|| async { proxy.isolations().await.unwrap().is_empty() }).await;
    assert_eq!(
        e.host.snapshot(),
        before,
        "target exit must restore everything ({path})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_invalidated_turns_degraded() {
    let e = env().await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let path = proxy.isolate("deg", "2-3", pids(&[4242])).await.unwrap();
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(path)
        .build()
        .await
        .unwrap();
    let mut state = iso.receive_state_changed().await;
    assert_eq!(state.next().await.unwrap().get().await.unwrap(), "active");
    let cg = first_partition(&proxy).await;
    std::fs::write(
        e.host.cgroup().join(&cg).join("cpuset.cpus.partition"),
        "root invalid (No cpu available due to hotplug)\n",
    )
    .unwrap();
    // A signal announces the change (no polling by the client)...
    let changed = tokio::time::timeout(Duration::from_secs(10), state.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.get().await.unwrap(), "degraded");
    // ...and the reason settles on the kernel's text. (std::fs::write truncates before it
    // writes, so the fake file is briefly empty; a kernel file never is.)
    let fresh = Isolation1Proxy::builder(&e.conn)
        .path(iso.inner().path().to_owned())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    wait_until(|| async {
        fresh
            .state_reason()
            .await
            .unwrap()
            .contains("No cpu available due to hotplug")
    })
    .await;
    let status = proxy.status().await.unwrap();
    let warnings = Vec::<String>::try_from(status[keys::WARNINGS].clone()).unwrap();
    assert!(warnings.iter().any(|w| w.contains("deg")), "{warnings:?}");
    std::fs::write(
        e.host.cgroup().join(&cg).join("cpuset.cpus.partition"),
        "root\n",
    )
    .unwrap();
    wait_until(|| async { fresh.state().await.unwrap() == "active" }).await;
    assert_eq!(fresh.state_reason().await.unwrap(), "");
    proxy.release("deg").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_ends_isolated_or_restored() {
    let bus = TestBus::start();
    let host = FakeHost::new(6);
    host.add_process(4242, "user.slice");
    let before = host.snapshot();
    let conn = bus.connect().await;
    let mut seen_complete = false;
    for step in 1..=40 {
        let step_s = step.to_string();
        let mut daemon = Daemon::start(
            &bus,
            &host,
            &[("KVMISOLATED_CRASH_AFTER_STEP", step_s.as_str())],
        );
        daemon.wait_ready(&conn).await;
        let proxy = Isolator1Proxy::new(&conn).await.unwrap();
        let result = proxy.isolate("crash", "2-3", pids(&[4242])).await;
        // Dead already when the hook fired; otherwise a SIGKILL right after success.
        daemon.kill();
        drop(daemon);
        let mut daemon = Daemon::start(&bus, &host, &[]);
        daemon.wait_ready(&conn).await;
        let proxy = Isolator1Proxy::new(&conn).await.unwrap();
        let isolations = proxy.isolations().await.unwrap();
        if isolations.is_empty() {
            assert_eq!(
                host.snapshot(),
                before,
                "crash after step {step}: not isolated, so fully restored"
            );
        } else {
            let iso = Isolation1Proxy::builder(&conn)
                .path(isolations[0].clone())
                .build()
                .await
                .unwrap();
            assert_eq!(
                iso.state().await.unwrap(),
                "active",
                "crash after step {step}: adopted isolation must be whole"
            );
            proxy.release("crash").await.unwrap();
            assert_eq!(
                host.snapshot(),
                before,
                "crash after step {step}: release after adoption"
            );
        }
        daemon.kill();
        if result.is_ok() {
            seen_complete = true;
            break;
        }
    }
    assert!(seen_complete, "Isolate never completed within 40 steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_committed_introspection() {
    let e = env().await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let path = proxy.isolate("intro", "2", pids(&[4242])).await.unwrap();
    let mut served = Vec::new();
    for p in [names::OBJECT_PATH, path.as_str()] {
        let intro = zbus::fdo::IntrospectableProxy::builder(&e.conn)
            .destination(names::BUS_NAME)
            .path(p)
            .build()
            .await
            .unwrap();
        served.push(intro.introspect().await.unwrap());
    }
    let want = shape(&[kvmisolate_dbus::INTROSPECTION_XML]);
    let got = shape(&served.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        got, want,
        "the served interfaces drifted from dbus/org.kvmisolate.Isolator1.xml"
    );
    proxy.release("intro").await.unwrap();
}

/// The comparable shape of the org.kvmisolate.* interfaces in some introspection documents.
fn shape(docs: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for doc in docs {
        let doc = doc.trim_start_matches(|c| c != '<');
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let tree = roxmltree::Document::parse_with_options(doc, opts).unwrap();
        for iface in tree.descendants().filter(|n| n.has_tag_name("interface")) {
            let iname = iface.attribute("name").unwrap_or_default();
            if !iname.starts_with("org.kvmisolate.") {
                continue;
            }
            out.insert(format!("interface {iname}"));
            for member in iface.children().filter(|n| n.is_element()) {
                let kind = member.tag_name().name();
                let mname = member.attribute("name").unwrap_or_default();
                match kind {
                    "property" => {
                        out.insert(format!(
                            "{iname} property {mname} {} {}",
                            member.attribute("type").unwrap_or_default(),
                            member.attribute("access").unwrap_or_default()
                        ));
                    }
                    "method" | "signal" => {
                        let args: Vec<String> = member
                            .children()
                            .filter(|n| n.has_tag_name("arg"))
                            .map(|a| {
                                format!(
                                    "{}:{}:{}",
                                    a.attribute("name").unwrap_or_default(),
                                    a.attribute("type").unwrap_or_default(),
                                    a.attribute("direction").unwrap_or(if kind == "signal" {
                                        "out"
                                    } else {
                                        "in"
                                    })
                                )
                            })
                            .collect();
                        out.insert(format!("{iname} {kind} {mname}({})", args.join(", ")));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// The partitioned cgroup of the first isolation `Status()` lists.
async fn first_partition(proxy: &Isolator1Proxy<'_>) -> String {
    let status = proxy.status().await.unwrap();
    let list =
        Vec::<HashMap<String, OwnedVariant>>::try_from(status[keys::ISOLATIONS].clone()).unwrap();
    Vec::<String>::try_from(list[0][keys::I_CGROUPS].clone()).unwrap()[0].clone()
}

async fn wait_until<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tuning knobs a test host has: vm.stat_interval and a 2M hugepage pool.
fn with_knobs(h: &FakeHost) {
    h.put("proc/sys/vm/stat_interval", "1\n");
    h.put(
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "0\n",
    );
    h.put(
        "proc/meminfo",
        "MemTotal:        2014848 kB\nMemAvailable:    1500000 kB\n",
    );
}

fn rows(t: &[(String, String, String, String, String)]) -> Vec<(&str, &str, &str, &str)> {
    t.iter()
        .map(|(n, s, _, o, c)| (n.as_str(), s.as_str(), o.as_str(), c.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunings_are_applied_shown_and_restored() {
    let e = env_full(&[], &[], with_knobs).await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let mut opts = pids(&[4242]);
    opts.insert(
        "tunings",
        Variant::from(vec!["vmstat-interval", "cpu-governor"]),
    );
    opts.insert("hugepages", Variant::from("8M"));
    let path = proxy.isolate("tuned", "2-3", opts).await.unwrap();
    assert_eq!(e.host.get("proc/sys/vm/stat_interval"), "120");
    assert_eq!(
        e.host
            .get("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "4"
    );
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(path)
        .build()
        .await
        .unwrap();
    assert_eq!(iso.profile().await.unwrap(), "custom");
    let t = iso.tunings().await.unwrap();
    assert_eq!(
        rows(&t),
        vec![
            ("hugepages", "applied", "0", "4"),
            ("vmstat-interval", "applied", "1", "120"),
            ("cpu-governor", "skipped", "", ""),
        ]
    );
    assert!(t[2].2.contains("no CPU frequency scaling"), "{}", t[2].2);
    let status = proxy.status().await.unwrap();
    let list =
        Vec::<HashMap<String, OwnedVariant>>::try_from(status[keys::ISOLATIONS].clone()).unwrap();
    let listed =
        Vec::<(String, String, String, String, String)>::try_from(list[0][keys::I_TUNINGS].clone())
            .unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(text(&list[0][keys::I_PROFILE]), "custom");
    // The same reply, read with the typed contract.
    let typed: keys::Status = e
        .conn
        .call_method(
            Some(names::BUS_NAME),
            names::OBJECT_PATH,
            Some(names::INTERFACE),
            "Status",
            &(),
        )
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
    assert_eq!(typed.isolations[0].tunings.len(), 3);
    assert_eq!(typed.isolations[0].tunings[0].name, "hugepages");
    assert!(typed.isolations[0].irqs_left.is_none());

    proxy.release("tuned").await.unwrap();
    assert_eq!(e.host.get("proc/sys/vm/stat_interval").trim(), "1");
    assert_eq!(
        e.host
            .get("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
            .trim(),
        "0"
    );
    assert!(!e.host.run().join("tunings.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tuning_rolls_the_isolation_back() {
    let e = env_full(&[], &[], with_knobs).await;
    let before = e.host.snapshot();
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let mut opts = pids(&[4242]);
    opts.insert("hugepages", Variant::from("4G"));
    let err = proxy.isolate("big", "2-3", opts).await.unwrap_err();
    assert_eq!(error_name(&err), ename::TUNING_FAILED);
    assert!(err.to_string().contains("memory in all"), "{err}");
    assert!(proxy.isolations().await.unwrap().is_empty());
    assert_eq!(e.host.snapshot(), before, "the partition was rolled back");
    assert_eq!(e.host.get("proc/sys/vm/stat_interval").trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_gives_cpus_and_tunings_by_name() {
    let e = env_full(&[], &[], |h| {
        with_knobs(h);
        h.put(
            "kvmisolate.toml",
            "[isolation.cfg]\ncpus = \"4\"\nprofile = \"none\"\nhugepages = \"2M\"\n",
        );
    })
    .await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let path = proxy.isolate("cfg", "", pids(&[4242])).await.unwrap();
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(path)
        .build()
        .await
        .unwrap();
    assert_eq!(iso.cpus().await.unwrap(), "4");
    assert_eq!(iso.profile().await.unwrap(), "none");
    let t = iso.tunings().await.unwrap();
    assert_eq!(rows(&t), vec![("hugepages", "applied", "0", "1")]);
    // A name without a section still needs CPUs.
    let err = proxy.isolate("other", "", pids(&[4243])).await.unwrap_err();
    assert_eq!(error_name(&err), ename::INVALID_CPU_LIST);
    assert!(err.to_string().contains("[isolation.other]"), "{err}");
    proxy.release("cfg").await.unwrap();
}

#[test]
fn a_malformed_configuration_stops_the_daemon_naming_the_line() {
    let host = FakeHost::new(4);
    host.put(
        "kvmisolate.toml",
        "[tunings]\nvmstat-interval = 5\nthp = 1\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvmisolated"))
        .arg("--config")
        .arg(host.config_path())
        .arg("--address")
        .arg("unix:path=/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("thp"), "{err}");
}

/// A running libvirt domain laid out as libvirt does (vCPUs on 3-4, emulator on 2, iothread
/// on 0-1), cpuset enabled down to the leaves; CPUs 4 and 5 are SMT siblings.
fn libvirt_domain(h: &FakeHost) {
    libvirt_domain_as(h, 7, "win10", 5000, ["3\n", "4\n", "2\n"]);
}

/// A running domain `name` with id `id` (a single digit), QEMU as `pid`, vCPUs and emulator
/// pinned to `pins`.
fn libvirt_domain_as(h: &FakeHost, id: u32, name: &str, pid: u32, pins: [&str; 3]) {
    let machine = kvmisolate_dbus::libvirt::machine::machine_name(id, name).replace('-', r"\x2d");
    let scope = format!("machine.slice/machine-{machine}.scope");
    let scope = scope.as_str();
    h.put("cgroup/cgroup.subtree_control", "cpuset memory pids\n");
    h.add_process(pid, &format!("{scope}/libvirt/emulator"));
    let cpuset = |dir: &str, pins: &str, control: &str| {
        for (f, v) in [
            ("cgroup.controllers", "cpuset memory pids\n"),
            ("cgroup.subtree_control", control),
            ("cpuset.cpus", pins),
            // The fake kernel shows an empty effective set on members.
            ("cpuset.cpus.effective", "\n"),
            ("cpuset.cpus.exclusive", "\n"),
            ("cpuset.cpus.exclusive.effective", "\n"),
            ("cpuset.cpus.partition", "member\n"),
            ("cgroup.procs", ""),
        ] {
            let p = format!("cgroup/{dir}/{f}");
            if f != "cgroup.procs" || !h.dir.path().join(&p).exists() {
                h.put(&p, v);
            }
        }
    };
    cpuset("machine.slice", "\n", "cpuset\n");
    cpuset(scope, "\n", "cpuset\n");
    cpuset(&format!("{scope}/libvirt"), "\n", "cpuset\n");
    for (leaf, pins) in [
        ("vcpu0", pins[0]),
        ("vcpu1", pins[1]),
        ("emulator", pins[2]),
        ("iothread1", "0-1\n"),
    ] {
        cpuset(&format!("{scope}/libvirt/{leaf}"), pins, "\n");
    }
    for dir in ["machine.slice", scope] {
        h.put(
            &format!("cgroup/{dir}/cgroup.events"),
            "populated 1\nfrozen 0\n",
        );
    }
    for cpu in [4, 5] {
        h.put(
            &format!("sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
            "4-5\n",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libvirt_domain_is_isolated_in_place_and_released_when_its_scope_empties() {
    let e = env_full(&[], &[], libvirt_domain).await;
    let before = e.host.snapshot();
    let proxy = Isolator1Proxy::builder(&e.conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let domain = |d: &str| HashMap::from([("libvirt-domain", Variant::from(d.to_owned()))]);

    // Bad requests change nothing and say what is wrong.
    for (cpus, d, name, needle) in [
        (
            "",
            "win1",
            ename::TARGET_NOT_FOUND,
            "\"win1\" is not running",
        ),
        ("2-5", "win10", ename::INVALID_CPU_LIST, "CPU 5 asked for"),
        ("", "", ename::INVALID_OPTION, "empty"),
    ] {
        let err = proxy.isolate("w", cpus, domain(d)).await.unwrap_err();
        assert_eq!(error_name(&err), name, "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(e.host.snapshot(), before);
    }

    let path = proxy
        .isolate("libvirt-win10", "", domain("win10"))
        .await
        .unwrap();
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(path)
        .build()
        .await
        .unwrap();
    assert_eq!(iso.cpus().await.unwrap(), "2-4");
    assert_eq!(iso.target().await.unwrap(), "libvirt:win10");
    assert_eq!(iso.partition().await.unwrap(), "isolated");
    let scope = r"machine.slice/machine-qemu\x2d7\x2dwin10.scope";
    for leaf in ["vcpu0", "vcpu1", "emulator"] {
        let p = format!("cgroup/{scope}/libvirt/{leaf}/cpuset.cpus.partition");
        assert_eq!(e.host.get(&p), "isolated\n", "{leaf}");
    }
    assert_eq!(
        e.host.get(&format!(
            "cgroup/{scope}/libvirt/iothread1/cpuset.cpus.partition"
        )),
        "member\n"
    );
    let status = proxy.status().await.unwrap();
    let list =
        Vec::<HashMap<String, OwnedVariant>>::try_from(status[keys::ISOLATIONS].clone()).unwrap();
    let cgroups = Vec::<String>::try_from(list[0][keys::I_CGROUPS].clone()).unwrap();
    assert_eq!(cgroups.len(), 3);
    let warnings = Vec::<String>::try_from(list[0][keys::I_WARNINGS].clone()).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("SMT: CPU 5 left to the host")),
        "{warnings:?}"
    );

    // The CLI shows the warnings, and refuses a second isolation of the same CPUs.
    let out = run_cli_as(0, &e.bus, &["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("libvirt-win10: SMT: CPU 5"), "{shown}");
    let out = run_cli_as(0, &e.bus, &["isolate", "--vm", "win10", "--name", "again"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // QEMU is gone (however it stopped): the scope empties and the isolation ends by itself.
    e.host.put(
        &format!("cgroup/{scope}/cgroup.events"),
        "populated 0\nfrozen 0\n",
    );
    wait_until(|| async { proxy.isolations().await.unwrap().is_empty() }).await;
    let mut after = e.host.snapshot();
    after.retain(|(k, _)| !k.ends_with(&format!("{scope}/cgroup.events")));
    let mut was = before.clone();
    was.retain(|(k, _)| !k.ends_with(&format!("{scope}/cgroup.events")));
    assert_eq!(after, was, "everything restored");

    // The CLI: --vm takes the CPUs from the pins and names the isolation libvirt-DOMAIN.
    e.host.put(
        &format!("cgroup/{scope}/cgroup.events"),
        "populated 1\nfrozen 0\n",
    );
    let out = run_cli_as(0, &e.bus, &["isolate", "--vm", "win10"]);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("Isolated CPUs 2-4 as \"libvirt-win10\"") && line.contains("libvirt win10"),
        "{line}"
    );
    proxy.release("libvirt-win10").await.unwrap();
}

/// Runs the libvirt hook as libvirtd does: arguments, the domain XML on stdin.
fn run_hook(e: &Env, args: &[&str], xml: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(common::cli_path())
        .arg("--address")
        .arg(&e.bus.address)
        .arg("libvirt-hook")
        .args(args)
        .env("KVMISOLATE_CONFIG", e.host.config_path())
        .env("KVMISOLATE_SYSFS_ROOT", e.host.sys())
        .env("KVMISOLATE_PROC_ROOT", e.host.proc())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `kvmisolate ARGS...` against the test bus.
fn run_cli(e: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::cli_path())
        .arg("--address")
        .arg(&e.bus.address)
        .args(args)
        .output()
        .unwrap()
}

fn domain_xml(name: &str, vcpus: &[&str], emulator: &str, optin: bool) -> String {
    let pins: String = vcpus
        .iter()
        .enumerate()
        .map(|(i, c)| format!("<vcpupin vcpu='{i}' cpuset='{c}'/>"))
        .collect();
    let meta = if optin {
        "<metadata><kvmisolate:isolate xmlns:kvmisolate='https://kvmisolate.org/xmlns/libvirt/1' profile='none'/></metadata>"
    } else {
        ""
    };
    format!(
        "<domain type='qemu'><name>{name}</name>{meta}<memory unit='MiB'>64</memory>\
         <vcpu>{}</vcpu><cputune>{pins}<emulatorpin cpuset='{emulator}'/>\
         <iothreadpin iothread='1' cpuset='0-1'/></cputune></domain>",
        vcpus.len()
    )
}

/// [`domain_xml`] opted in with `hugepages='auto'` and its 64 MiB backed by 2M hugepages.
fn hugepage_domain_xml(name: &str, vcpus: &[&str], emulator: &str) -> String {
    domain_xml(name, vcpus, emulator, true)
        .replace(
            "<memory unit='MiB'>64</memory>",
            "<memory unit='MiB'>64</memory><memoryBacking><hugepages/></memoryBacking>",
        )
        .replace("profile='none'", "profile='none' hugepages='auto'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_libvirt_hook_checks_at_prepare_isolates_at_started_and_releases() {
    let e = env_full(&[], &[], libvirt_domain).await;
    let before = e.host.snapshot();
    let proxy = Isolator1Proxy::builder(&e.conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let win10 = domain_xml("win10", &["3", "4"], "2", true);
    for op in ["prepare", "start"] {
        let out = run_hook(&e, &["win10", op, "begin", "-"], &win10);
        assert!(out.status.success(), "{op}: {out:?}");
    }
    assert!(
        proxy.isolations().await.unwrap().is_empty(),
        "nothing before started"
    );
    let out = run_hook(&e, &["win10", "started", "begin", "-"], &win10);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(proxy.isolated_cpus().await.unwrap(), "2-4");

    // A second domain wanting CPU 4 is refused at prepare, with the reason libvirt shows.
    let other = domain_xml("other", &["4", "5"], "0-1", true);
    let out = run_hook(&e, &["other", "prepare", "begin", "-"], &other);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CPU 4 is already held by isolation 'libvirt-win10'"),
        "{err}"
    );
    // ... unless it only asks for a warning; and a domain that did not opt in is left alone.
    e.host
        .put("kvmisolate.toml", "[vm.other]\non-conflict = \"warn\"\n");
    let out = run_hook(&e, &["other", "prepare", "begin", "-"], &other);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    let plain = domain_xml("plain", &["4"], "0-1", false);
    let out = run_hook(&e, &["plain", "prepare", "begin", "-"], &plain);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    // Malformed XML from an opted-in domain is an error naming the problem.
    let broken = "<domain><metadata><kvmisolate:isolate \
                  xmlns:kvmisolate='https://kvmisolate.org/xmlns/libvirt/1'/>";
    let out = run_hook(&e, &["win10", "prepare", "begin", "-"], broken);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not well-formed"));

    let out = run_hook(&e, &["win10", "release", "end", "-"], &win10);
    assert!(out.status.success(), "{out:?}");
    assert!(proxy.isolations().await.unwrap().is_empty());
    assert_eq!(e.host.snapshot(), before, "release restores everything");
    // release again (the service released it already): fine.
    let out = run_hook(&e, &["win10", "release", "end", "-"], &win10);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_reserves_hugepages_at_prepare_and_returns_them_at_release() {
    let e = env_full(&[], &[], |h| {
        libvirt_domain(h);
        with_knobs(h);
    })
    .await;
    let before = e.host.snapshot();
    let pool = "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let proxy = Isolator1Proxy::builder(&e.conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let xml = hugepage_domain_xml("win10", &["3", "4"], "2");
    let out = run_hook(&e, &["win10", "prepare", "begin", "-"], &xml);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        e.host.get(pool).trim(),
        "32",
        "64 MiB of 2M pages, before QEMU exists"
    );
    let status = proxy.status().await.unwrap();
    let list =
        Vec::<HashMap<String, OwnedVariant>>::try_from(status[keys::ISOLATIONS].clone()).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(text(&list[0][keys::I_NAME]), "hugepages-win10");
    assert_eq!(text(&list[0][keys::I_TARGET]), "reservation:win10");
    assert_eq!(text(&list[0][keys::I_CPUS]), "");
    // It holds no partition, and says so: on the bus, in Status() and in `kvmisolate status`.
    assert_eq!(text(&list[0][keys::I_PARTITION]), "none");
    let described = text(&list[0][keys::I_DESCRIPTION]);
    assert_eq!(
        described,
        "reserves 32 hugepages of 2M (64M:2M) for libvirt domain \"win10\" from its prepare \
         to its release; holds no CPUs and no partition"
    );
    let paths = proxy.isolations().await.unwrap();
    let reservation = Isolation1Proxy::builder(&e.conn)
        .path(paths[0].clone())
        .build()
        .await
        .unwrap();
    assert_eq!(reservation.partition().await.unwrap(), "none");
    let shown = run_cli(&e, &["status"]);
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    let row = shown
        .lines()
        .find(|l| l.starts_with("hugepages-win10 "))
        .unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(
        row.split_whitespace().take(3).collect::<Vec<_>>(),
        ["hugepages-win10", "-", "none"],
        "{shown}"
    );
    assert!(
        shown.contains(&format!("  hugepages-win10: {described}\n")),
        "{shown}"
    );

    let out = run_hook(&e, &["win10", "started", "begin", "-"], &xml);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(proxy.isolations().await.unwrap().len(), 2);
    assert_eq!(proxy.isolated_cpus().await.unwrap(), "2-4");
    let status = proxy.status().await.unwrap();
    let list =
        Vec::<HashMap<String, OwnedVariant>>::try_from(status[keys::ISOLATIONS].clone()).unwrap();
    let domain = list
        .iter()
        .find(|i| text(&i[keys::I_NAME]) == "libvirt-win10")
        .unwrap();
    assert_eq!(text(&domain[keys::I_PARTITION]), "isolated");
    assert_eq!(
        text(&domain[keys::I_DESCRIPTION]),
        "CPUs 2-4 in 3 isolated partitions for libvirt:win10"
    );
    assert_eq!(
        e.host.get(pool).trim(),
        "32",
        "started does not reserve twice"
    );

    let out = run_hook(&e, &["win10", "release", "end", "-"], &xml);
    assert!(out.status.success(), "{out:?}");
    assert!(proxy.isolations().await.unwrap().is_empty());
    assert_eq!(e.host.get(pool).trim(), "0");
    assert_eq!(e.host.snapshot(), before);

    // The bus refuses a reservation that is not one.
    let bad = HashMap::from([("reserve-for-domain", Variant::from("win10".to_owned()))]);
    let err = proxy.isolate("r", "", bad).await.unwrap_err();
    assert_eq!(error_name(&err), ename::INVALID_OPTION, "{err:?}");
}

/// Runs the CLI as `uid` on a thread of its own (the test keeps driving the bus meanwhile).
fn cli_in_background(
    e: &Env,
    uid: u32,
    args: &[&str],
) -> tokio::task::JoinHandle<std::process::Output> {
    let address = e.bus.address.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_cli_at(uid, &address, &args)
    })
}

/// A mock polkit that says yes to NOBODY after `secs` seconds (a person typing a password).
async fn slow_polkit(
    e: &Env,
    secs: u64,
) -> (
    Connection,
    std::sync::Arc<std::sync::Mutex<Vec<common::PolkitCall>>>,
) {
    let (pk, policy, calls) = start_mock_polkit(&e.bus).await;
    let mut p = policy.lock().unwrap();
    p.answers.insert(NOBODY, (true, false));
    p.delay = Some(Duration::from_secs(secs));
    (pk, calls)
}

/// Waits until polkit was asked for `action`.
async fn polkit_asked(
    calls: &std::sync::Arc<std::sync::Mutex<Vec<common::PolkitCall>>>,
    action: &str,
) {
    let calls = calls.clone();
    let action = action.to_owned();
    wait_until(move || {
        let calls = calls.clone();
        let action = action.clone();
        async move { calls.lock().unwrap().iter().any(|c| c.action == action) }
    })
    .await;
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A Release is for the lease it was asked about: one made under the same name while polkit
/// was being asked is another lease, left alone (even for a caller polkit then says yes to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_acts_on_the_lease_it_was_asked_for() {
    let e = env().await;
    let (_pk, calls) = slow_polkit(&e, 2).await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    proxy.isolate("x", "2", pids(&[4242])).await.unwrap();
    let cli = cli_in_background(&e, NOBODY, &["--no-ask-password", "release", "x"]);
    polkit_asked(&calls, names::ACTION_RELEASE).await;
    // Meanwhile root releases x and makes a new x.
    proxy.release("x").await.unwrap();
    proxy.isolate("x", "3", pids(&[4243])).await.unwrap();
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("released meanwhile"),
        "{}",
        stderr(&out)
    );
    let paths = proxy.isolations().await.unwrap();
    assert_eq!(paths.len(), 1);
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(paths[0].clone())
        .build()
        .await
        .unwrap();
    assert_eq!(iso.cpus().await.unwrap(), "3", "the new x stays");
    proxy.release("x").await.unwrap();
}

/// ReleaseAll releases what was held when it was called: a lease made while polkit is asked
/// (here: someone else's) is not part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_all_leaves_leases_made_while_it_runs() {
    let e = env().await;
    let (_pk, calls) = slow_polkit(&e, 2).await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    proxy.isolate("old", "2", pids(&[4242])).await.unwrap();
    let cli = cli_in_background(&e, NOBODY, &["--no-ask-password", "release", "--all"]);
    polkit_asked(&calls, names::ACTION_RELEASE).await;
    proxy.isolate("new", "3", pids(&[4243])).await.unwrap();
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let paths = proxy.isolations().await.unwrap();
    assert_eq!(paths.len(), 1);
    assert!(paths[0].as_str().ends_with("new"), "{paths:?}");
    proxy.release("new").await.unwrap();
}

/// The idle exit never ends the service while a call is in progress (here: a polkit check
/// that takes longer than the idle timeout), and still comes once it is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_exit_waits_for_a_call_in_flight() {
    let mut e = env_with(&[], &["--idle-timeout", "2"]).await;
    let (_pk, calls) = slow_polkit(&e, 5).await;
    let cli = cli_in_background(
        &e,
        NOBODY,
        &[
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--pid",
            "4242",
            "--name",
            "slow",
        ],
    );
    polkit_asked(&calls, names::ACTION_ISOLATE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        e._daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited idle during a call"
    );
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    proxy.release("slow").await.unwrap();
    // Idle now: it exits by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = e._daemon.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no idle exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM lets the call in progress finish (the isolation is made and journalled, the caller
/// gets its answer), then the service exits; the next start adopts the isolation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_call_in_flight() {
    let mut e = env().await;
    let (_pk, calls) = slow_polkit(&e, 2).await;
    let cli = cli_in_background(
        &e,
        NOBODY,
        &[
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--pid",
            "4242",
            "--name",
            "busy",
        ],
    );
    polkit_asked(&calls, names::ACTION_ISOLATE).await;
    let pid = nix::unistd::Pid::from_raw(e._daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = cli.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status = tokio::task::block_in_place(|| e._daemon.child.wait()).unwrap();
    assert!(status.success(), "{status}");
    assert!(e.host.run().join("isolations/busy.json").exists());
    // The next start adopts it.
    let mut daemon = Daemon::start(&e.bus, &e.host, &[]);
    daemon.wait_ready(&e.conn).await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    assert_eq!(proxy.isolations().await.unwrap().len(), 1);
    proxy.release("busy").await.unwrap();
    e._daemon = daemon;
}

/// A `caller-disconnects` lease whose caller left while the service was down is released at
/// the next start; one whose caller is still there is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_caller_left_while_the_service_was_down_is_released() {
    let mut e = env().await;
    let before = e.host.snapshot();
    let stays = e.bus.connect().await;
    let leaves = e.bus.connect().await;
    for (conn, name, cpus, pid) in [(&stays, "stays", "2", 4242), (&leaves, "leaves", "3", 4243)] {
        let p = Isolator1Proxy::new(conn).await.unwrap();
        let mut opts = pids(&[pid]);
        opts.insert("release-when", Variant::from("caller-disconnects"));
        p.isolate(name, cpus, opts).await.unwrap();
    }
    e._daemon.kill();
    drop(leaves);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut daemon = Daemon::start(&e.bus, &e.host, &[]);
    daemon.wait_ready(&e.conn).await;
    e._daemon = daemon;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let paths = proxy.isolations().await.unwrap();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(paths[0].as_str().ends_with("stays"), "{paths:?}");
    drop(stays);
    wait_until(|| async { proxy.isolations().await.unwrap().is_empty() }).await;
    assert_eq!(e.host.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_broken_stops_only_domains_that_opt_in() {
    let e = env_full(&[], &[], libvirt_domain).await;
    let before = e.host.snapshot();
    e.host.put(
        "kvmisolate.toml",
        "[vm.win10]\nprofile = \"none\"\n[vm.other\n",
    );
    // A domain that does not opt in starts: a broken file or an XML the parser rejects is
    // logged, not fatal.
    let plain = domain_xml("plain", &["4"], "0-1", false);
    for xml in [plain.as_str(), "<domain><name>plain</", "not xml at all"] {
        for op in ["prepare", "started", "release"] {
            let out = run_hook(&e, &["plain", op, "begin", "-"], xml);
            assert!(out.status.success(), "{op} {xml}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("warning")
                    && err.contains("does not opt in")
                    && err.contains("kvmisolate.toml"),
                "{err}"
            );
        }
    }
    // A domain that opts in (in the XML, or by a section of the broken file) does not.
    for (dom, optin) in [("win10", false), ("other", false), ("plain", true)] {
        let xml = domain_xml(dom, &["3", "4"], "2", optin);
        let out = run_hook(&e, &[dom, "prepare", "begin", "-"], &xml);
        assert_eq!(out.status.code(), Some(3), "{dom}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("kvmisolate.toml"),
            "{out:?}"
        );
    }
    assert_eq!(e.host.snapshot(), before);
}

/// Two domains whose names were one isolation name before (`libvirt-` and the first 56
/// characters): both isolated, each with its hugepages, and the release of one leaves the
/// other whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_whose_names_collided_are_isolated_and_released_apart() {
    let long = "d".repeat(56);
    let (a, b) = (format!("{long}a"), format!("{long}b"));
    let e = env_full(&[], &[], |h| {
        libvirt_domain_as(h, 7, &a, 5000, ["2\n", "3\n", "0-1\n"]);
        libvirt_domain_as(h, 8, &b, 5001, ["4\n", "5\n", "0-1\n"]);
        with_knobs(h);
    })
    .await;
    let before = e.host.snapshot();
    let pool = "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let proxy = Isolator1Proxy::builder(&e.conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let (xa, xb) = (
        hugepage_domain_xml(&a, &["2", "3"], "0-1"),
        hugepage_domain_xml(&b, &["4", "5"], "0-1"),
    );
    for (name, x) in [(&a, &xa), (&b, &xb)] {
        for op in ["prepare", "started"] {
            let out = run_hook(&e, &[name, op, "begin", "-"], x);
            assert!(out.status.success(), "{op} {name}: {out:?}");
        }
    }
    assert_eq!(proxy.isolated_cpus().await.unwrap(), "2-5");
    assert_eq!(e.host.get(pool).trim(), "64");
    let names = |st: &HashMap<String, OwnedVariant>| -> BTreeSet<(String, String)> {
        Vec::<HashMap<String, OwnedVariant>>::try_from(st[keys::ISOLATIONS].clone())
            .unwrap()
            .iter()
            .map(|i| (text(&i[keys::I_NAME]), text(&i[keys::I_TARGET])))
            .collect()
    };
    let held = names(&proxy.status().await.unwrap());
    assert_eq!(held.len(), 4, "{held:?}");
    for (name, target) in &held {
        assert!(name.len() <= 64 && name.contains(&long[..40]), "{name}");
        assert!(target.ends_with(&a) || target.ends_with(&b), "{target}");
    }

    let out = run_hook(&e, &[&a, "release", "end", "-"], &xa);
    assert!(out.status.success(), "{out:?}");
    let left = names(&proxy.status().await.unwrap());
    assert_eq!(
        left.iter()
            .map(|(_, t)| t.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            format!("libvirt:{b}").as_str(),
            format!("reservation:{b}").as_str()
        ]),
    );
    assert_eq!(proxy.isolated_cpus().await.unwrap(), "4-5");
    assert_eq!(e.host.get(pool).trim(), "32", "b keeps its hugepages");

    let out = run_hook(&e, &[&b, "release", "end", "-"], &xb);
    assert!(out.status.success(), "{out:?}");
    assert!(proxy.isolations().await.unwrap().is_empty());
    assert_eq!(e.host.snapshot(), before);
}

/// Whose target it is decides the action: the caller's own processes need
/// `org.kvmisolate.isolate`, anyone else's `org.kvmisolate.isolate-any`, and RT throttling off
/// or a large pool `org.kvmisolate.tune-host` too. polkit sees what is done in the details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_decides_the_action() {
    let e = env_full(&[], &[], with_knobs).await;
    let (_pk, policy, calls) = start_mock_polkit(&e.bus).await;
    let before = e.host.snapshot();
    let grant = |action: &str, yes: bool| {
        policy
            .lock()
            .unwrap()
            .per_action
            .insert((NOBODY, action.to_owned()), (yes, false));
    };
    grant(names::ACTION_ISOLATE, true);
    grant(names::ACTION_ISOLATE_ANY, false);
    grant(names::ACTION_TUNE_HOST, false);
    let isolate = |extra: &[&str]| {
        let mut args = vec![
            "--no-ask-password",
            "isolate",
            "--cpus",
            "2",
            "--until",
            "release",
        ];
        args.extend_from_slice(extra);
        run_cli_as(NOBODY, &e.bus, &args)
    };
    let last = || calls.lock().unwrap().last().cloned().unwrap();

    // Its own process: isolate, with the target in the details.
    let out = isolate(&["--pid", "4242", "--name", "mine"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let call = last();
    assert_eq!(call.action, names::ACTION_ISOLATE);
    assert_eq!(call.details["target"], "pids:4242");
    assert_eq!(call.details["target_kind"], "pids");
    assert_eq!(call.details["target_owner"], NOBODY.to_string());
    assert_eq!(call.details["name"], "mine");
    assert_eq!(call.details["cpus"], "2");
    assert_eq!(
        run_cli_as(NOBODY, &e.bus, &["release", "mine"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(e.host.snapshot(), before);

    // Root's process, or its own together with root's: isolate-any, denied, nothing changed.
    for pids in [
        &["--pid", "4243"][..],
        &["--pid", "4242", "--pid", "4243"][..],
    ] {
        let mut args = pids.to_vec();
        args.extend(["--name", "theirs"]);
        let out = isolate(&args);
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        let call = last();
        assert_eq!(call.action, names::ACTION_ISOLATE_ANY);
        assert!(call.details["target_owner"].split(',').any(|u| u == "0"));
        assert!(call.details["why"].contains("uid 0"), "{:?}", call.details);
        assert_eq!(e.host.snapshot(), before);
    }
    // A libvirt domain is never the caller's (it is not even looked up first).
    let out = run_cli_as(
        NOBODY,
        &e.bus,
        &["--no-ask-password", "isolate", "--vm", "win10"],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(last().action, names::ACTION_ISOLATE_ANY);
    assert_eq!(last().details["target"], "libvirt:win10");
    assert_eq!(last().details["name"], "vm-win10", "users get vm- names");
    // The hook's names are root's: refused before polkit is asked.
    let asked = calls.lock().unwrap().len();
    for name in ["libvirt-x", "hugepages-x"] {
        let out = isolate(&["--pid", "4242", "--name", name]);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("reserved for the libvirt hook"));
    }
    assert_eq!(calls.lock().unwrap().len(), asked);
    // A unit needs systemd, which this host lacks: said before polkit is asked.
    let out = isolate(&["--unit", "sshd.service"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert_eq!(calls.lock().unwrap().len(), asked);

    // Host-wide risk: tune-host on top of isolate.
    for extra in [
        &["--tunings", "realtime"][..],
        &["--tunings", "rt-throttling"][..],
        // MemAvailable 1500000 kB - 256 MiB margin: 1208 MiB may be taken, 604 MiB is spare.
        &["--hugepages", "700M"][..],
    ] {
        let mut args = vec!["--pid", "4242", "--name", "risky"];
        args.extend_from_slice(extra);
        let out = isolate(&args);
        assert_eq!(out.status.code(), Some(4), "{extra:?}: {out:?}");
        let call = last();
        assert_eq!(call.action, names::ACTION_TUNE_HOST);
        assert_eq!(call.details["target"], "pids:4242");
        assert_eq!(e.host.snapshot(), before);
    }
    assert_eq!(last().details["hugepages"], "700M:2M");
    let out = isolate(&["--pid", "4242", "--name", "small", "--hugepages", "64M"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(last().action, names::ACTION_ISOLATE);
    assert_eq!(
        run_cli_as(NOBODY, &e.bus, &["release", "small"])
            .status
            .code(),
        Some(0)
    );

    // With the rules granting them, the same calls work.
    grant(names::ACTION_ISOLATE_ANY, true);
    grant(names::ACTION_TUNE_HOST, true);
    let out = isolate(&["--pid", "4243", "--name", "theirs", "--hugepages", "700M"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    assert_eq!(proxy.isolated_cpus().await.unwrap(), "2");
    assert_eq!(
        run_cli_as(NOBODY, &e.bus, &["release", "theirs"])
            .status
            .code(),
        Some(0)
    );
    // More than MemAvailable minus the margin: refused for everyone, saying why.
    let mut opts = pids(&[4243]);
    opts.insert("hugepages", Variant::from("1300M"));
    let err = proxy.isolate("huge", "2", opts).await.unwrap_err();
    assert_eq!(error_name(&err), ename::TUNING_FAILED);
    assert!(
        err.to_string()
            .contains("MemAvailable 1464 MiB minus a margin of 256 MiB"),
        "{err}"
    );
    assert_eq!(e.host.snapshot(), before);
}

/// `win 11` and `win_11`: one machine name for libvirt (`qemu-N-win11`), one isolation name for
/// the hook before. The service tells their scopes apart by libvirt's pid file of each; the
/// hook's names differ; releasing one leaves the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn win_11_and_win_underscore_11_are_two_domains() {
    let host_dir = tempfile::tempdir().unwrap();
    let run = host_dir.path().join("libvirt-qemu");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("win 11.pid"), "5000\n").unwrap();
    std::fs::write(run.join("win_11.pid"), "5001\n").unwrap();
    let run_text = run.to_str().unwrap().to_owned();
    let e = env_full(
        &[("KVMISOLATED_TEST_LIBVIRT_RUN_DIR", run_text.as_str())],
        &[],
        |h| {
            libvirt_domain_as(h, 7, "win 11", 5000, ["2\n", "3\n", "0-1\n"]);
            libvirt_domain_as(h, 8, "win_11", 5001, ["4\n", "5\n", "0-1\n"]);
        },
    )
    .await;
    let before = e.host.snapshot();
    let proxy = Isolator1Proxy::builder(&e.conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let xa = domain_xml("win 11", &["2", "3"], "0-1", true);
    let xb = domain_xml("win_11", &["4", "5"], "0-1", true);
    for (name, x) in [("win 11", &xa), ("win_11", &xb)] {
        let out = run_hook(&e, &[name, "started", "begin", "-"], x);
        assert!(out.status.success(), "{name}: {out:?}");
    }
    let status = proxy.status().await.unwrap();
    let mut held: Vec<(String, String, String)> =
        Vec::<HashMap<String, OwnedVariant>>::try_from(status[keys::ISOLATIONS].clone())
            .unwrap()
            .iter()
            .map(|i| {
                (
                    text(&i[keys::I_NAME]),
                    text(&i[keys::I_TARGET]),
                    text(&i[keys::I_CPUS]),
                )
            })
            .collect();
    held.sort();
    assert_eq!(
        held,
        [
            (
                "libvirt-win_11".into(),
                "libvirt:win_11".into(),
                "4-5".into()
            ),
            (
                "libvirt-win_11-6c1a7f5d".into(),
                "libvirt:win 11".into(),
                "2-3".into()
            ),
        ]
    );
    let out = run_hook(&e, &["win 11", "release", "end", "-"], &xa);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(proxy.isolated_cpus().await.unwrap(), "4-5");
    let out = run_hook(&e, &["win_11", "release", "end", "-"], &xb);
    assert!(out.status.success(), "{out:?}");
    assert!(proxy.isolations().await.unwrap().is_empty());
    assert_eq!(e.host.snapshot(), before);
}

/// `dbus-send` as `uid` (the CLI has no preset command: the desktop client calls it).
fn dbus_send_as(uid: u32, e: &Env, method: &str, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("dbus-send")
        .uid(uid)
        .gid(uid)
        .arg(format!("--bus={}", e.bus.address))
        .arg("--print-reply")
        .arg(format!("--dest={}", names::BUS_NAME))
        .arg(names::OBJECT_PATH)
        .arg(format!("{}.{method}", names::INTERFACE))
        .args(args)
        .output()
        .expect("dbus-send (package dbus-bin)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_are_listed_and_started_like_isolate_of_their_target() {
    let e = env_full(&[], &[], |h| {
        libvirt_domain(h);
        h.put(
            "kvmisolate.toml",
            "[isolation.win]\nlibvirt-domain = \"win10\"\nprofile = \"none\"\n\
             [isolation.game]\ncpus = \"2-3\"\nunit = \"game.service\"\n\
             [isolation.plain]\ncpus = \"5\"\n",
        );
    })
    .await;
    let (_pk, policy, calls) = start_mock_polkit(&e.bus).await;
    let proxy = Isolator1Proxy::builder(&e.conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let row = |n: &str, c: &str, t: &str, p: &str, ok: bool, why: &str| {
        (n.into(), c.into(), t.into(), p.into(), ok, why.into())
    };
    let idle = vec![
        row("game", "2-3", "unit:game.service", "default", true, ""),
        row("win", "", "libvirt:win10", "none", true, ""),
    ];
    assert_eq!(proxy.presets().await.unwrap(), idle);
    let before = e.host.snapshot();

    // Hostile names: no preset, before polkit is asked; nothing changes.
    for name in ["nope", "plain", "", "../win", "win\n", &"w".repeat(5000)] {
        let err = proxy.start_preset(name).await.unwrap_err();
        assert_eq!(
            error_name(&err),
            ename::NO_SUCH_ISOLATION,
            "{name:?}: {err}"
        );
        assert!(err.to_string().contains("configured: game, win"), "{err}");
    }
    assert!(calls.lock().unwrap().is_empty());
    assert_eq!(e.host.snapshot(), before);

    // An unprivileged caller: the domain is not theirs, so isolate-any, denied here.
    let out = dbus_send_as(NOBODY, &e, "StartPreset", &["string:win"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
    {
        let calls = calls.lock().unwrap();
        let last = calls.last().expect("polkit was asked");
        assert_eq!(
            (last.uid, last.action.as_str()),
            (NOBODY, names::ACTION_ISOLATE_ANY)
        );
        assert_eq!(last.details["target"], "libvirt:win10");
        assert_eq!(last.details["name"], "win");
    }
    let out = dbus_send_as(NOBODY, &e, "StartPreset", &["string:nope"]);
    assert!(
        stderr(&out).contains(ename::NO_SUCH_ISOLATION),
        "{}",
        stderr(&out)
    );
    assert_eq!(e.host.snapshot(), before);
    assert!(proxy.isolations().await.unwrap().is_empty());

    // The unit preset goes through Isolate's checks: no systemd on this host.
    let err = proxy.start_preset("game").await.unwrap_err();
    assert_eq!(error_name(&err), ename::UNSUPPORTED_HOST, "{err}");
    assert_eq!(e.host.snapshot(), before);

    // Allowed: isolated as Isolate("win", "", {libvirt-domain: win10}) would be.
    policy.lock().unwrap().answers.insert(NOBODY, (true, false));
    // A caching proxy follows PropertiesChanged.
    let watching = Isolator1Proxy::new(&e.conn).await.unwrap();
    let mut changes = watching.receive_presets_changed().await;
    let out = dbus_send_as(NOBODY, &e, "StartPreset", &["string:win"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = proxy.isolations().await.unwrap().pop().unwrap();
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(path)
        .build()
        .await
        .unwrap();
    assert_eq!(iso.cpus().await.unwrap(), "2-4");
    assert_eq!(iso.target().await.unwrap(), "libvirt:win10");
    assert_eq!(iso.profile().await.unwrap(), "none");
    assert_eq!(iso.owner_uid().await.unwrap(), NOBODY);
    let busy = vec![
        row(
            "game",
            "2-3",
            "unit:game.service",
            "default",
            false,
            "CPUs 2-3 are held by win",
        ),
        row(
            "win",
            "",
            "libvirt:win10",
            "none",
            false,
            "already isolated",
        ),
    ];
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(c) = changes.next().await {
            if c.get().await.unwrap() == busy {
                return;
            }
        }
    })
    .await
    .expect("PropertiesChanged announcing the busy presets");
    assert_eq!(proxy.presets().await.unwrap(), busy);
    let err = proxy.start_preset("win").await.unwrap_err();
    assert_eq!(error_name(&err), ename::NAME_EXISTS, "{err}");

    proxy.release("win").await.unwrap();
    assert_eq!(proxy.presets().await.unwrap(), idle);
    assert_eq!(e.host.snapshot(), before);
}

/// `vfio-irqs`: a guest enables its assigned device's MSI vector after the domain was isolated
/// (its driver loads during boot); the service notices within a few seconds, puts the new IRQ
/// on the vCPUs' CPUs, shows it in `Tunings`, and the release restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vfio_irqs_follow_a_vector_the_guest_enables_after_the_isolation() {
    let host_dir = tempfile::tempdir().unwrap();
    let run = host_dir.path().join("libvirt-qemu");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("win10.pid"), "5000\n").unwrap();
    let live = domain_xml("win10", &["3", "4"], "2", false).replace(
        "</cputune>",
        "</cputune><devices><hostdev mode='subsystem' type='pci' managed='yes'><source>\
         <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev>\
         </devices>",
    );
    std::fs::write(
        run.join("win10.xml"),
        format!("<domstatus>{live}</domstatus>"),
    )
    .unwrap();
    let run_text = run.to_str().unwrap().to_owned();
    let e = env_full(
        &[("KVMISOLATED_TEST_LIBVIRT_RUN_DIR", run_text.as_str())],
        &[],
        |h| {
            libvirt_domain(h);
            h.put("sys/bus/pci/devices/0000:01:00.0/irq", "0\n");
            std::fs::create_dir_all(h.sys().join("bus/pci/devices/0000:01:00.0/msi_irqs")).unwrap();
        },
    )
    .await;
    let proxy = Isolator1Proxy::new(&e.conn).await.unwrap();
    let opts = HashMap::from([
        ("libvirt-domain", Variant::from("win10".to_owned())),
        ("vfio-irqs", Variant::from("vcpu")),
        ("tunings", Variant::from(vec!["vfio-irqs"])),
    ]);
    let path = proxy.isolate("libvirt-win10", "", opts).await.unwrap();
    let iso = Isolation1Proxy::builder(&e.conn)
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let t = iso.tunings().await.unwrap();
    assert_eq!(rows(&t)[0].1, "skipped", "{t:?}");
    assert!(t[0].2.contains("no IRQ allocated yet"), "{}", t[0].2);

    // The guest's driver enables MSI: vfio-pci's vector 160, on every CPU.
    e.host.put("proc/irq/160/smp_affinity_list", "0-5\n");
    e.host
        .put("sys/bus/pci/devices/0000:01:00.0/msi_irqs/160", "msi\n");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while e.host.get("proc/irq/160/smp_affinity_list") != "3-4" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "IRQ 160 still on {:?} 10 s after the guest enabled it",
            e.host.get("proc/irq/160/smp_affinity_list")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = iso.tunings().await.unwrap();
    assert_eq!(rows(&t)[0].1, "applied", "{t:?}");
    assert!(t[0].4.contains("IRQ 160"), "{t:?}");

    proxy.release("libvirt-win10").await.unwrap();
    // The fake file holds what was written; the kernel's reads back with a newline.
    assert_eq!(e.host.get("proc/irq/160/smp_affinity_list").trim(), "0-5");
}
