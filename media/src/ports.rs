//! The UDP port range media sockets bind in. webrtc-rs binds one socket per peer connection, so
//! the SFU leases a port per connection and returns it when the connection is dropped.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Inner {
    min: u16,
    max: u16,
    next: u16,
    in_use: BTreeSet<u16>,
}

/// Hands out ports from `min..=max`, round-robin, skipping ports that are leased.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    inner: Arc<Mutex<Inner>>,
}

/// A leased port; returned to the allocator on drop.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Ok(mut g) = self.inner.lock() {
            g.in_use.remove(&self.port);
        }
    }
}

impl PortAllocator {
    pub fn new(min: u16, max: u16) -> Self {
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        PortAllocator {
            inner: Arc::new(Mutex::new(Inner {
                min,
                max,
                next: min,
                in_use: BTreeSet::new(),
            })),
        }
    }

    /// Lease the next free port, or `None` when every port in the range is leased.
    pub fn lease(&self) -> Option<PortLease> {
        let mut g = self.inner.lock().ok()?;
        let span = u32::from(g.max - g.min) + 1;
        for _ in 0..span {
            let p = g.next;
            g.next = if p >= g.max { g.min } else { p + 1 };
            if g.in_use.insert(p) {
                return Some(PortLease {
                    port: p,
                    inner: self.inner.clone(),
                });
            }
        }
        None
    }

    pub fn leased(&self) -> usize {
        self.inner.lock().map(|g| g.in_use.len()).unwrap_or(0)
    }

    pub fn capacity(&self) -> usize {
        self.inner
            .lock()
            .map(|g| usize::from(g.max - g.min) + 1)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_unique_and_returned_on_drop() {
        let a = PortAllocator::new(5000, 5002);
        let l1 = a.lease().expect("1");
        let l2 = a.lease().expect("2");
        let l3 = a.lease().expect("3");
        let mut ports = vec![l1.port(), l2.port(), l3.port()];
        ports.sort();
        assert_eq!(ports, vec![5000, 5001, 5002]);
        assert!(a.lease().is_none(), "exhausted");
        drop(l2);
        assert_eq!(a.lease().expect("freed").port(), 5001);
        assert_eq!(a.capacity(), 3);
    }
}
