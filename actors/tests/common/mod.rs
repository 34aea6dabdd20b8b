//! What the command-line tests share: a `rafter sim apiserver` process, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `rafter sim apiserver` with `args`, writing its kubeconfig to `kubeconfig`, and returns
/// once it has printed its URL (it listens from then on).
pub fn sim_apiserver(kubeconfig: &Path, args: &[&str]) -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rafter"))
        .args(["sim", "apiserver"])
        .args(args)
        .arg("--kubeconfig-out")
        .arg(kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rafter sim apiserver starts");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut url = String::new();
    BufReader::new(stdout).read_line(&mut url).expect("the server prints its URL");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (server, url.trim().to_string())
}
