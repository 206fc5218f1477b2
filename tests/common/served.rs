//! `esg serve` as a child process for the tests of the dashboard: on a port of its own
//! choosing (it prints the address it is bound to), killed when dropped.

use super::{esg_command, World};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// How long the server may take to say its address.
const WITHIN: Duration = Duration::from_secs(60);

/// `esg serve` running; killed when dropped.
pub struct Served {
    child: Child,
    pub addr: std::net::SocketAddr,
    stderr: PathBuf,
}

impl Served {
    /// Starts `esg serve --listen 127.0.0.1:0` and waits (by deadline) for the address it
    /// prints.
    pub fn start(world: &World) -> Served {
        Served::start_on(world, "127.0.0.1:0")
    }

    pub fn start_on(world: &World, listen: &str) -> Served {
        Served::start_with(&world.config_path, world.dir.path(), listen)
    }

    /// `esg serve --listen LISTEN --config CONFIG`, its output in `scratch`.
    pub fn start_with(config: &Path, scratch: &Path, listen: &str) -> Served {
        let stdout = scratch.join(format!("serve-{listen}.out"));
        let stderr = scratch.join(format!("serve-{listen}.err"));
        let mut child = esg_command(["serve", "--listen", listen, "--config"])
            .arg(config)
            .stdout(std::fs::File::create(&stdout).expect("stdout"))
            .stderr(std::fs::File::create(&stderr).expect("stderr"))
            .spawn()
            .expect("esg serve starts");
        let deadline = Instant::now() + WITHIN;
        let addr = loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            let addr = text.lines().find_map(|l| {
                l.split("listening on http://")
                    .nth(1)?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            });
            if let Some(addr) = addr {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "esg serve exited ({status}) before saying its address: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "esg serve said no address within {WITHIN:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Served {
            child,
            addr,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`: the status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(self.url(path)).await.expect("GET");
        let status = r.status().as_u16();
        (status, r.text().await.expect("body"))
    }

    /// GET `path`, which must answer 200: its body.
    pub async fn ok(&self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
