//! Where `check --vm NAME` gets the domain's XML: `virsh --readonly dumpxml` (libvirt's
//! read-only socket works unprivileged), else libvirt's own files (the live status XML, then the
//! persistent definition), or a file given for tests; parsed by the hook's parser, with its
//! opt-in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::check;
use crate::failure::{ExitCode, Failure};

/// How long `virsh dumpxml` may take.
const VIRSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `<domain>` element of a libvirt status file (`<domstatus>` wrapping it), or the text
/// as it is.
fn unwrap_domstatus(text: &str) -> &str {
    if !text.contains("<domstatus") {
        return text;
    }
    let start = text
        .match_indices("<domain")
        .find(|(i, _)| {
            matches!(
                text.as_bytes().get(i + 7),
                Some(b' ' | b'>' | b'\n' | b'\t')
            )
        })
        .map(|(i, _)| i);
    match (start, text.rfind("</domain>")) {
        (Some(a), Some(b)) if a < b => &text[a..b + "</domain>".len()],
        _ => text,
    }
}

/// Runs `virsh --readonly -c qemu:///system dumpxml NAME` (libvirt's read-only socket works
/// unprivileged): the XML, or why not.
fn virsh_dumpxml(name: &str) -> Result<String, String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("virsh")
        .args(["--readonly", "-c", "qemu:///system", "dumpxml", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run virsh: {e}"))?;
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > VIRSH_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "virsh did not answer in {}s",
                    VIRSH_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot wait for virsh: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot read virsh's output: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Err(format!("virsh dumpxml failed: {msg}"))
    }
}

/// The domain to audit: its XML (from `file`, virsh, or libvirt's files) parsed by the hook's
/// parser, and its opt-in.
pub fn load_domain(
    name: &str,
    file: Option<&PathBuf>,
    config: &Path,
) -> Result<check::vm::VmInput, Failure> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(Failure::new(
            ExitCode::Usage,
            format!("--vm {name:?}: not a libvirt domain name"),
        ));
    }
    let (text, source) = match file {
        Some(f) => (
            std::fs::read_to_string(f).map_err(|e| {
                Failure::new(
                    ExitCode::BadRequest,
                    format!("cannot read {}: {e}", f.display()),
                )
            })?,
            f.display().to_string(),
        ),
        None => {
            let mut tried = Vec::new();
            let mut found = None;
            match virsh_dumpxml(name) {
                Ok(x) => found = Some((x, "virsh dumpxml".to_owned())),
                Err(e) => tried.push(e),
            }
            for path in [
                format!("/run/libvirt/qemu/{name}.xml"),
                format!("/etc/libvirt/qemu/{name}.xml"),
            ] {
                if found.is_some() {
                    break;
                }
                match std::fs::read_to_string(&path) {
                    Ok(x) => found = Some((x, path)),
                    Err(e) => tried.push(format!("{path}: {e}")),
                }
            }
            found.ok_or_else(|| {
                Failure::new(
                    ExitCode::NotFound,
                    format!(
                        "libvirt domain {name:?} not found (is it defined? virsh list --all shows the domains); tried: {}",
                        tried.join("; ")
                    ),
                )
            })?
        }
    };
    let domain = crate::libvirt::domain::Domain::parse(unwrap_domstatus(&text)).map_err(|e| {
        Failure::new(
            ExitCode::BadRequest,
            format!("domain {name:?} ({source}): {e}"),
        )
    })?;
    if domain.name != name {
        return Err(Failure::new(
            ExitCode::BadRequest,
            format!("{source} holds domain {:?}, not {name:?}", domain.name),
        ));
    }
    let settings = crate::libvirt::optin::read_vm_sections(config)
        .and_then(|sections| crate::libvirt::optin::settings(&domain, sections.get(name)));
    Ok(check::vm::VmInput {
        domain,
        source,
        settings,
        xml: unwrap_domstatus(&text).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    #[test]
    fn domstatus_is_unwrapped() {
        let st = "<domstatus state='running'>\n  <domainname>x</domainname>\n  <domain type='kvm' id='1'><name>x</name></domain>\n</domstatus>";
        assert_eq!(
            super::unwrap_domstatus(st),
            "<domain type='kvm' id='1'><name>x</name></domain>"
        );
        assert_eq!(super::unwrap_domstatus("<domain/>"), "<domain/>");
    }

    #[test]
    fn domain_xml_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vm.xml");
        std::fs::write(
            &f,
            "<domstatus state='running'><domain type='kvm' id='4'><name>vm</name><vcpu>1</vcpu>\
             <cputune><vcpupin vcpu='0' cpuset='3'/></cputune></domain></domstatus>",
        )
        .unwrap();
        let conf = dir.path().join("kvmisolate.toml");
        std::fs::write(&conf, "[vm.vm]\nprofile = \"realtime\"\n").unwrap();
        let v = super::load_domain("vm", Some(&f), &conf).unwrap();
        assert_eq!(v.domain.id, Some(4));
        assert_eq!(v.domain.vcpupins[&0].to_string(), "3");
        assert!(matches!(v.settings, Ok(Some(_))), "[vm.vm] opts in");
        let e = super::load_domain("other", Some(&f), &conf).unwrap_err();
        assert!(
            e.message.contains("holds domain \"vm\", not \"other\""),
            "{}",
            e.message
        );
        std::fs::write(&conf, "[vm.vm]\nprofile = \"fastest\"\n").unwrap();
        let v = super::load_domain("vm", Some(&f), &conf).unwrap();
        assert!(v.settings.unwrap_err().contains("fastest"));
        std::fs::write(&f, "<domain><name>vm</name>").unwrap();
        let e = super::load_domain("vm", Some(&f), &conf).unwrap_err();
        assert!(e.message.starts_with("domain \"vm\""), "{}", e.message);
    }

    #[test]
    fn domains_that_cannot_be_found_are_named() {
        let e = super::load_domain("a/b", None, std::path::Path::new("/nonexistent")).unwrap_err();
        assert!(
            e.message.contains("not a libvirt domain name"),
            "{}",
            e.message
        );
        let e = super::load_domain(
            "kvmisolate-no-such-domain",
            None,
            std::path::Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("\"kvmisolate-no-such-domain\" not found")
                && e.message
                    .contains("/etc/libvirt/qemu/kvmisolate-no-such-domain.xml"),
            "{}",
            e.message
        );
    }
}
