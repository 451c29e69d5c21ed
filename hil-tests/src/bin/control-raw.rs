//! `control-raw SOCKET LINE…`: connects to a control socket, sends each LINE as it is
//! (no console, no client library: what a user could do with any socket tool), and prints
//! each response line. The lab runs it as an appliance's account to show that the daemon,
//! not the console, decides.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, lines)) = args.split_first() else {
        eprintln!("usage: control-raw SOCKET LINE…");
        return ExitCode::from(2);
    };
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let mut rd = match s.try_clone() {
        Ok(r) => BufReader::new(r),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    for l in lines {
        if s.write_all(l.as_bytes())
            .and_then(|()| s.write_all(b"\n"))
            .is_err()
        {
            break;
        }
        let mut resp = String::new();
        match rd.read_line(&mut resp) {
            Ok(0) | Err(_) => break,
            Ok(_) => print!("{resp}"),
        }
    }
    ExitCode::SUCCESS
}
