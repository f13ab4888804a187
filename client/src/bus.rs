//! The bus side of every command: which bus, the connection, the manager's proxy, the calls
//! that may need authorization (the polkit flag, a tty agent), and the three calls several
//! commands make: `Status()` (typed), `Isolate` (with its one-line result) and the one
//! `Release`.

use kvmisolate_dbus::proxy::{Isolation1Proxy, Isolator1Proxy};
use kvmisolate_dbus::status::Status;
use zbus::proxy::{CacheProperties, MethodFlags};
use zbus::{Connection, DynamicTuple, OwnedObjectPath};

use crate::agent::TtyAgent;
use crate::failure::{BusDescription, Failure, connect_failure, from_zbus};
use crate::request::{self, IsolateRequest};

/// What every command that talks to kvmisolated needs: the bus, whether it may ask for a
/// password, and whether it reports what it did.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `--address`: a bus other than the system bus.
    pub address: Option<&'a str>,
    /// Interactive authorization allowed (not `--no-ask-password`).
    pub interactive: bool,
    /// `--quiet`: no result lines.
    pub quiet: bool,
}

impl Context<'_> {
    /// The same context that never asks for a password: for calls on our own isolations
    /// (which need no authorization) and for the libvirt hook.
    pub fn never_asking(&self) -> Self {
        Self {
            interactive: false,
            ..*self
        }
    }

    fn description(&self) -> BusDescription<'_> {
        BusDescription {
            address: self.address,
        }
    }

    /// A D-Bus error as the command's failure (exit code and message).
    pub fn failure(&self, e: &zbus::Error) -> Failure {
        from_zbus(e, self.description())
    }

    /// Connects to the bus.
    pub async fn connect(&self) -> Result<Connection, Failure> {
        let conn = match self.address {
            Some(a) => zbus::connection::Builder::address(a).build().await,
            None => Connection::system().await,
        };
        conn.map_err(|e| connect_failure(&e, self.description()))
    }

    /// The manager object, properties read at each access (never cached).
    pub async fn isolator<'c>(&self, conn: &'c Connection) -> Result<Isolator1Proxy<'c>, Failure> {
        Isolator1Proxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| self.failure(&e))
    }

    fn flags(&self) -> MethodFlags {
        if self.interactive {
            MethodFlags::ALLOW_INTERACTIVE_AUTH
        } else {
            MethodFlags::empty()
        }
    }

    /// Calls a method of the manager that may need authorization: with the
    /// ALLOW_INTERACTIVE_AUTHORIZATION flag unless `--no-ask-password`, and with a tty agent
    /// running when that is useful.
    pub async fn call_authorized<B, R>(
        &self,
        proxy: &Isolator1Proxy<'_>,
        method: &'static str,
        body: &B,
    ) -> Result<R, Failure>
    where
        B: serde::Serialize + zbus::DynamicType,
        R: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        let agent = TtyAgent::start_if_useful(self.interactive);
        let reply = proxy
            .inner()
            .call_with_flags(method, self.flags(), body)
            .await;
        drop(agent);
        match reply {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Failure::other(format!(
                "kvmisolated sent no reply to {method}"
            ))),
            Err(e) => Err(self.failure(&e)),
        }
    }

    /// Prints a result line, unless `--quiet`.
    pub fn say(&self, line: &str) {
        if !self.quiet {
            crate::output::emit(&format!("{line}\n"));
        }
    }

    /// `Status()`, typed.
    pub async fn status(&self, proxy: &Isolator1Proxy<'_>) -> Result<Status, Failure> {
        proxy
            .inner()
            .call("Status", &())
            .await
            .map_err(|e| self.failure(&e))
    }

    /// `Release(name)`: the one place an isolation is released.
    pub async fn release(&self, proxy: &Isolator1Proxy<'_>, name: &str) -> Result<(), Failure> {
        self.call_authorized(proxy, "Release", &DynamicTuple((name,)))
            .await
    }

    /// Sends `Isolate` for `req`; returns the object path and the one-line result.
    pub async fn isolate(
        &self,
        conn: &Connection,
        req: &IsolateRequest,
    ) -> Result<(OwnedObjectPath, String), Failure> {
        let proxy = self.isolator(conn).await?;
        let path: OwnedObjectPath = self
            .call_authorized(
                &proxy,
                "Isolate",
                &DynamicTuple((req.name.as_str(), req.cpus.as_str(), req.options())),
            )
            .await?;
        // What the service chose (the partition type) and reports (the target), for the result
        // line; the isolation exists either way, so reading them is best effort (and skipped
        // when the line is not shown).
        let mut cpus = req.cpus.clone();
        let (mut partition, mut target) = (
            req.partition
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            request::target_text(&req.target),
        );
        if self.quiet {
            let line = request::result_line(&cpus, req.name.as_str(), &partition, &target);
            return Ok((path, line));
        }
        if let Ok(iso) = Isolation1Proxy::builder(conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
        {
            if let Ok(p) = iso.partition().await {
                partition = p;
            }
            if let Ok(t) = iso.target().await {
                target = t;
            }
            if let Ok(c) = iso.cpus().await {
                cpus = c;
            }
        }
        let line = request::result_line(&cpus, req.name.as_str(), &partition, &target);
        Ok((path, line))
    }
}
