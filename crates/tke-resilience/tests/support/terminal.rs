//! Real kubectl on a pseudo-terminal, as a user at a terminal runs `kubectl exec -it` or
//! `kubectl run -it`: what it shows, typing into it, and resizing the terminal (it is kubectl's
//! controlling terminal, so kubectl gets `SIGWINCH` and sends the new size on).

use anyhow::{Context as _, bail};
use tke_cloudsim::pty::Pty;
use tke_testbed::ControlPlane;
use tokio::{process::Child, sync::watch};

use super::eklet::PATIENCE;

pub struct Terminal {
    pty: std::sync::Arc<Pty>,
    /// Everything kubectl has shown so far.
    screen: watch::Receiver<Vec<u8>>,
    /// How much of the screen [`expect`](Self::expect) has consumed.
    seen: usize,
    kubectl: Child,
}

impl Terminal {
    /// `kubectl --kubeconfig <cp's> args…` with `env`, on a terminal of `width` × `height`.
    pub fn kubectl(
        cp: &ControlPlane,
        args: &[&str],
        env: &[(&str, &str)],
        (width, height): (u16, u16),
    ) -> anyhow::Result<Terminal> {
        let mut pty = Pty::open(width, height)?;
        let kubeconfig = cp.kubeconfig().display().to_string();
        let all = ["--kubeconfig", kubeconfig.as_str()]
            .into_iter()
            .chain(args.iter().copied());
        let mut command = pty.command(cp.bin("kubectl"), all)?;
        command.envs(env.iter().copied()).kill_on_drop(true);
        let kubectl = command.spawn()?;
        drop(command);
        let pty = std::sync::Arc::new(pty);
        let (shown, screen) = watch::channel(Vec::new());
        let reader = pty.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0; 16 * 1024];
            while let Ok(n @ 1..) = reader.read(&mut buffer).await {
                shown.send_modify(|screen| screen.extend_from_slice(&buffer[..n]));
            }
        });
        Ok(Terminal {
            pty,
            screen,
            seen: 0,
            kubectl,
        })
    }

    /// Waits until `text` shows after what earlier calls consumed; returns what showed up to and
    /// including it.
    pub async fn expect(&mut self, text: &str) -> anyhow::Result<String> {
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                {
                    let screen = self.screen.borrow_and_update();
                    let fresh = &screen[self.seen..];
                    if let Some(at) = fresh.windows(text.len()).position(|w| w == text.as_bytes()) {
                        let shown = String::from_utf8_lossy(&fresh[..at + text.len()]).into_owned();
                        self.seen += at + text.len();
                        return Ok(shown);
                    }
                }
                if self.screen.changed().await.is_err() {
                    bail!("kubectl's terminal closed");
                }
            }
        })
        .await;
        found
            .with_context(|| format!("{text:?} did not show"))?
            .with_context(|| format!("{text:?} did not show; the screen: {:?}", self.screen()))
    }

    /// Types `text` (Enter is `\r`, as in raw mode).
    pub async fn type_text(&self, text: &str) -> anyhow::Result<()> {
        Ok(self.pty.write_all(text.as_bytes()).await?)
    }

    pub fn resize(&self, width: u16, height: u16) -> anyhow::Result<()> {
        Ok(self.pty.resize(width, height)?)
    }

    /// Everything kubectl has shown, for failure messages.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.borrow()).into_owned()
    }

    /// Waits for kubectl to exit; its exit code.
    pub async fn exit_code(mut self) -> anyhow::Result<i32> {
        let status = tokio::time::timeout(PATIENCE, self.kubectl.wait())
            .await
            .with_context(|| format!("kubectl did not exit; the screen: {:?}", self.screen()))??;
        Ok(status.code().unwrap_or(-1))
    }
}
