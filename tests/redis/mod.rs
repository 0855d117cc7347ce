//! A throwaway redis-server (Debian's) on a free port, without persistence. Test binaries
//! that use it also have `mod common;` (for `eventually`).
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts redis-server on `port` (0: a free one) and waits until it answers.
    pub async fn start(port: u16) -> Redis {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        } else {
            port
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server ({error}): install it with `apt-get install -y redis-server` (or run .ci/run)")
            });
        let redis = Redis { child, port };
        let what = format!("redis-server to accept connections on port {port}");
        crate::common::eventually(Duration::from_secs(10), &what, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
        })
        .await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
