//! `cargo xtask run` with no arguments: a lab of network namespaces that
//! shows the gateway at work, then removes itself.
//!
//! ```text
//! h1 (10.77.1.11) --+
//!                   +-- sw (bridge) -- lan0 [gw: natd] wan0 -- srv (203.0.113.2)
//! h2 (10.77.1.12) --+                 10.77.1.1   203.0.113.1
//! ```
//! Both LAN hosts talk UDP and TCP from the same source port, and ping with
//! the same ICMP identifier; the server prints what it saw. Then the other
//! way: the WAN server calls a public port forwarded to both LAN hosts,
//! load balanced, and they print the client address they saw.

use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::command_output;

const SERVER: &str = r#"
import socket, threading, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("203.0.113.2", 7000)); u.settimeout(15)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("203.0.113.2", 8000)); t.listen(); t.settimeout(15)
def udp():
    for _ in range(2):
        data, peer = u.recvfrom(100); print(f"server: UDP from {peer[0]}:{peer[1]}", flush=True); u.sendto(data, peer)
def tcp():
    for _ in range(2):
        c, peer = t.accept(); print(f"server: TCP from {peer[0]}:{peer[1]}", flush=True); c.sendall(c.recv(100)); c.close()
a = threading.Thread(target=udp); b = threading.Thread(target=tcp); a.start(); b.start(); a.join(); b.join()
"#;

const CLIENT: &str = r#"
import socket, sys
me = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((me, 5000)); u.settimeout(5)
u.sendto(b"hello", ("203.0.113.2", 7000)); print(f"{me}:5000 UDP reply {u.recvfrom(100)[0]!r}", flush=True)
t = socket.socket(); t.bind((me, 5000)); t.settimeout(5); t.connect(("203.0.113.2", 8000))
t.sendall(b"hello"); print(f"{me}:5000 TCP reply {t.recv(100)!r}", flush=True)
"#;

/// A web server on a LAN host: answers its own address, and prints each
/// client it serves that is not the gateway (whose health checks connect
/// every second). Ends by itself.
const WEB: &str = r#"
import socket, sys, time
me = sys.argv[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((me, 8081)); s.listen(); s.settimeout(1)
end = time.time() + 20
while time.time() < end:
    try: c, peer = s.accept()
    except socket.timeout: continue
    c.settimeout(1)
    try:
        if c.recv(1000) and peer[0] != "10.77.1.1":
            print(f"{me}: HTTP request from {peer[0]}:{peer[1]}", flush=True)
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nanswered by " + me.encode() + b"\n")
    except OSError: pass
    c.close()
"#;

struct Lab {
    prefix: String,
    natd: Option<Child>,
}

impl Lab {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn ip(&self, host: &str, args: &[&str]) -> Result<String> {
        command_output(Command::new("ip").arg("-n").arg(self.ns(host)).args(args))
    }

    fn exec(&self, host: &str, args: &[&str]) -> Result<String> {
        command_output(Command::new("ip").args(["netns", "exec", &self.ns(host)]).args(args))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut natd) = self.natd.take() {
            // SIGINT: natd detaches its programs on the way out.
            let _ = Command::new("kill").args(["-INT", &natd.id().to_string()]).status();
            let _ = natd.wait();
        }
        for host in ["h1", "h2", "sw", "gw", "srv"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(host)]).output();
        }
    }
}

impl Lab {
    /// Polls `natd status` until natd answers (bounded), or fails with why.
    fn wait_for_natd(&mut self, natd: &str) -> Result<()> {
        for _ in 0..50 {
            if let Some(child) = self.natd.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("natd exited during start-up ({status}); its error is above");
            }
            if self.exec("gw", &[natd, "status"]).is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("natd did not answer `natd status` within 5 s")
    }
}

pub fn run(natd: &std::path::Path) -> Result<()> {
    if crate::bootstrap::euid() != 0 {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    let mut lab = Lab { prefix: format!("natlab{}", std::process::id()), natd: None };
    for host in ["h1", "h2", "sw", "gw", "srv"] {
        command_output(Command::new("ip").args(["netns", "add", &lab.ns(host)]))?;
        lab.ip(host, &["link", "set", "lo", "up"])?;
    }
    lab.ip("sw", &["link", "add", "br0", "type", "bridge"])?;
    for (i, host) in ["h1", "h2"].iter().enumerate() {
        let port = format!("p{i}");
        lab.ip("sw", &["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &lab.ns(host)])?;
        lab.ip("sw", &["link", "set", &port, "master", "br0", "up"])?;
        lab.ip(host, &["addr", "add", &format!("10.77.1.1{}/24", i + 1), "dev", "eth0"])?;
        lab.ip(host, &["link", "set", "eth0", "up"])?;
        lab.ip(host, &["route", "add", "default", "via", "10.77.1.1"])?;
    }
    lab.ip("sw", &["link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", &lab.ns("gw")])?;
    lab.ip("sw", &["link", "set", "up0", "master", "br0", "up"])?;
    lab.ip("sw", &["link", "set", "br0", "up"])?;
    lab.ip("gw", &["link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", &lab.ns("srv")])?;
    lab.ip("gw", &["addr", "add", "10.77.1.1/24", "dev", "lan0"])?;
    lab.ip("gw", &["addr", "add", "203.0.113.1/24", "dev", "wan0"])?;
    lab.ip("srv", &["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
    for (host, ifname) in [("gw", "lan0"), ("gw", "wan0"), ("srv", "eth0")] {
        lab.ip(host, &["link", "set", ifname, "up"])?;
    }
    // XDP redirects into a veth arrive only where the receiving end runs NAPI
    // (GRO on). Senders keep TX checksum offload on: the fast path finishes
    // their partial checksums.
    lab.exec("sw", &["ethtool", "-K", "up0", "gro", "on"])?;
    lab.exec("srv", &["ethtool", "-K", "eth0", "gro", "on"])?;

    // The web servers of the forward, up before natd checks them.
    let webs: Vec<Child> = ["10.77.1.11", "10.77.1.12"]
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            Command::new("ip")
                .args(["netns", "exec", &lab.ns(&format!("h{}", i + 1)), "python3", "-c", WEB, addr])
                .stdout(Stdio::inherit())
                .spawn()
                .context("starting a lab web server (python3)")
        })
        .collect::<Result<_>>()?;
    println!("lab: starting natd in namespace {}", lab.ns("gw"));
    lab.natd = Some(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("gw")])
            .arg(natd)
            .args(["run", "--lan", "lan0", "--wan", "wan0", "--forward", "tcp:8080=10.77.1.11:8081,10.77.1.12:8081"])
            .spawn()
            .context("starting natd")?,
    );
    let natd_cmd = natd.to_str().context("natd path is not UTF-8")?;
    lab.wait_for_natd(natd_cmd)?;

    let server = Command::new("ip")
        .args(["netns", "exec", &lab.ns("srv"), "python3", "-c", SERVER])
        .stdout(Stdio::inherit())
        .spawn()
        .context("starting the lab server (python3)")?;
    thread::sleep(Duration::from_millis(500));
    for (host, addr) in [("h1", "10.77.1.11"), ("h2", "10.77.1.12")] {
        print!("{}", lab.exec(host, &["python3", "-c", CLIENT, addr])?);
        let ping = lab.exec(host, &["ping", "-c", "2", "-i", "0.3", "-W", "2", "-e", "4242", "203.0.113.2"])?;
        if let Some(line) = ping.lines().find(|l| l.contains("received")) {
            println!("{addr} ping with ICMP id 4242: {line}");
        }
    }
    let out = server.wait_with_output()?;
    if !out.status.success() {
        bail!("the lab server failed");
    }
    println!("lab: both hosts used source port 5000; the server saw two external ports on 203.0.113.1.");

    println!("lab: the other way: 203.0.113.1:8080 is forwarded to both LAN hosts (load balanced, health-checked)");
    for _ in 0..6 {
        let answer = lab.exec("srv", &["curl", "-sS", "--max-time", "3", "http://203.0.113.1:8080/"])?;
        println!("203.0.113.2: curl http://203.0.113.1:8080/ -> {}", answer.trim());
    }
    println!("lab: natd forwards on the gateway:");
    print!("{}", lab.exec("gw", &[natd_cmd, "forwards"])?);
    println!("lab: natd sessions on the gateway:");
    print!("{}", lab.exec("gw", &[natd_cmd, "sessions"])?);
    for mut web in webs {
        let _ = web.kill();
        let _ = web.wait();
    }
    Ok(())
}
