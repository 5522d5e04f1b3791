//! A containerd daemon of its own (content store only, no CRI) in a short
//! temp directory, driven with `ctr`; drop stops it.

use super::process::run_bounded;
use super::wait_until;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A containerd daemon of its own (content store only, no CRI), for `ctr`.
pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        // Short: unix socket paths must stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ptc")
            .tempdir_in("/tmp")
            .expect("tempdir in /tmp");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.tracing.processor.v1.otlp\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("write containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut containerd = Containerd {
            child: Some(child),
            dir,
        };
        wait_until("containerd to answer", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = containerd.child.as_mut().map(|c| c.try_wait()) {
                panic!("containerd exited ({status}):\n{}", containerd.log());
            }
            containerd.ctr(&["version"]).status.success().then_some(())
        });
        containerd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -a SOCK ARGS`, bounded in time.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new("ctr");
        command.arg("-a").arg(self.socket()).args(args);
        run_bounded(command, Duration::from_secs(60))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
