//! The floor: the cheapest SFU data path there is, to put the servers' CPU per packet in
//! perspective. One thread, one blocking UDP socket: receive a datagram, send it unchanged to
//! every other participant of the sender's room, one `sendto` each. No crypto, no RTP parsing,
//! no timers; routing is a hash map from the sender's address to its room.
//!
//! A participant registers its socket first (`FLREG` + room as a big-endian u32, answered with
//! `FLACK`; `FLBYE` leaves). `load --target floor --url udp://ADDR` drives it with the same
//! rooms, packets (stamped Opus, padded to the size of an SRTP-GCM packet) and measurements as
//! commhub and Janus; see benches/compare.sh.
//!
//! ```sh
//! floor --listen 127.0.0.1:18090
//! ```

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};

use anyhow::Context;
use clap::Parser;
use commhub_benches::light::floor_proto::{ACK, BYE, REGISTER};

#[derive(Parser, Debug)]
#[command(about = "Null forwarder: each datagram to the other participants of its room")]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:18090")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sock = UdpSocket::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    eprintln!("floor: listening on {}", sock.local_addr()?);
    let mut rooms: HashMap<u32, Vec<SocketAddr>> = HashMap::new();
    let mut member: HashMap<SocketAddr, u32> = HashMap::new();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ICMP port unreachable from a participant gone, reported on a later call.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e).context("recv_from"),
        };
        let d = &buf[..n];
        if d.first() != Some(&b'F') {
            // Media: to the others of the sender's room.
            if let Some(list) = member.get(&from).and_then(|r| rooms.get(r)) {
                for to in list {
                    if *to != from {
                        let _ = sock.send_to(d, to);
                    }
                }
            }
            continue;
        }
        if d.len() >= 9 && d.starts_with(REGISTER) {
            let room = u32::from_be_bytes([d[5], d[6], d[7], d[8]]);
            if member.insert(from, room).is_none() {
                rooms.entry(room).or_default().push(from);
            }
            let _ = sock.send_to(ACK, from);
        } else if d.starts_with(BYE)
            && let Some(room) = member.remove(&from)
            && let Some(list) = rooms.get_mut(&room)
        {
            list.retain(|a| *a != from);
        }
    }
}
