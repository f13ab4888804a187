//! A private `dbus-daemon` for the bus tests of every crate (included by each with
//! `#[path]`): a real daemon on a socket in a temp dir, open to every user (tests run the CLI
//! as other users), killed on drop. A missing `dbus-daemon` is a broken test setup
//! (tests/setup-host installs it), never a skip.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

use zbus::Connection;

/// A private dbus-daemon. Killed on drop.
pub struct TestBus {
    pub dir: tempfile::TempDir,
    pub address: String,
    child: Child,
}

impl TestBus {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kvmisolate-bus")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_replies_per_connection">50000</limit>
  <limit name="reply_timeout">300000</limit>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        // --print-address: the daemon prints its address once it listens (the socket file
        // appears at bind(), before listen(): connecting then is refused).
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .arg("--print-address")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon must be installed (tests/setup-host installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("dbus-daemon's address");
        assert!(
            line.contains("unix:path=") && socket.exists(),
            "dbus-daemon did not start listening (printed {line:?})"
        );
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
        Self {
            address: format!("unix:path={}", socket.display()),
            dir,
            child,
        }
    }

    pub async fn connect(&self) -> Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
