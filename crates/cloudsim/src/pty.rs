//! A pseudo-terminal, for an exec that asks for a tty: the agent keeps the master side and the
//! process gets the slave as its stdin, stdout, stderr and controlling terminal, as a container
//! runtime gives it. The end-to-end tests drive `kubectl exec -it` through one too.
//!
//! The slave becomes the controlling terminal through util-linux `setsid --ctty` in front of the
//! program ([`Pty::command`]): that needs no `pre_exec` (this workspace forbids `unsafe`), and a
//! program that is not found exits 127 (126 if it cannot be executed), as a runtime reports it.
//! Reading the master after every holder of the slave is gone fails with `EIO`; [`Pty::read`]
//! reports that as the end of the output.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::net::unix::pipe;

/// The master side of a pseudo-terminal, non-blocking.
#[derive(Debug)]
pub struct Pty {
    /// Two descriptors of the master, registered with Tokio as the ends of a pipe (which they
    /// behave as): no `unsafe` registration of a raw descriptor needed.
    output: pipe::Receiver,
    input: pipe::Sender,
    /// Until [`command`](Self::command) hands it to a process.
    slave: Option<OwnedFd>,
}

impl Pty {
    /// A new pseudo-terminal of `width` columns and `height` rows.
    pub fn open(width: u16, height: u16) -> io::Result<Pty> {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::io::ioctl_fionbio(&master, true)?;
        let pty = Pty {
            output: pipe::Receiver::from_owned_fd_unchecked(master.try_clone()?)?,
            input: pipe::Sender::from_owned_fd_unchecked(master)?,
            slave: Some(slave),
        };
        pty.resize(width, height)?;
        Ok(pty)
    }

    /// `program args…` in a new session whose controlling terminal is this one, the slave its
    /// stdin, stdout and stderr. Spawn it and drop the command (which holds the slave) at once, so
    /// that the output ends when the process and its children are gone. Only the first call gets
    /// the terminal.
    pub fn command<S: AsRef<OsStr>>(
        &mut self,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> io::Result<tokio::process::Command> {
        let slave = self.slave.take().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the terminal already has its process",
            )
        })?;
        // Looked up here: the process's own `PATH` may be the container's.
        let setsid = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("setsid"))
            .find(|path| path.is_file())
            .unwrap_or_else(|| "setsid".into());
        let mut command = tokio::process::Command::new(setsid);
        command
            .arg("--ctty")
            .arg(program)
            .args(args)
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        Ok(command)
    }

    /// Sets the terminal's size; the process's foreground group gets `SIGWINCH`.
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        rustix::termios::tcsetwinsize(
            &self.input,
            Winsize {
                ws_row: height,
                ws_col: width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )?;
        Ok(())
    }

    /// What the process wrote; 0 once no process holds the terminal any more.
    pub async fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            self.output.readable().await?;
            match self.output.try_read(buffer) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) if err.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(0);
                }
                result => return result,
            }
        }
    }

    /// Types `bytes` into the terminal.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.input.writable().await?;
            match self.input.try_write(bytes) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_on_the_terminal_sees_a_terminal_of_its_size_and_what_is_typed() {
        let mut pty = Pty::open(100, 30).unwrap();
        let mut command = pty
            .command(
                "sh",
                ["-c", "read line; [ -t 0 ] && echo \"tty $line $(stty size)\""],
            )
            .unwrap();
        let mut child = command.spawn().unwrap();
        drop(command);
        pty.write_all(b"typed\n").await.unwrap();
        let mut output = Vec::new();
        let mut buffer = [0; 1024];
        loop {
            let n = pty.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            output.extend_from_slice(&buffer[..n]);
        }
        assert!(child.wait().await.unwrap().success());
        let output = String::from_utf8_lossy(&output);
        // The terminal echoes what is typed, and turns "\n" into "\r\n".
        assert!(output.contains("tty typed 30 100\r\n"), "{output:?}");
    }

    #[tokio::test]
    async fn a_missing_program_exits_127_as_from_a_runtime() {
        let mut pty = Pty::open(80, 24).unwrap();
        let mut command = pty.command("no-such-program-here", Vec::<String>::new()).unwrap();
        let status = command.status().await.unwrap();
        assert_eq!(status.code(), Some(127));
    }
}
