//! File descriptors bound how many connections the gateway can hold: each
//! client connection may hold an upstream one too. At start-up the soft
//! limit is raised to the hard one (as nginx's `worker_rlimit_nofile`
//! would be set by hand), and `limits.max_connections` is lowered to what
//! the limit can carry, so that connections are refused cleanly with a 503
//! before `accept` starts failing.

/// Descriptors kept for listeners, the admin side, health checks and logs.
const RESERVED: u64 = 128;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force afterwards (`None` if it cannot be read).
pub fn raise_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// The connection cap `descriptors` can carry: two per client connection
/// (its own and an upstream one) after the reserve, never above what the
/// config asks for and never below 1.
pub fn connection_cap(configured: u32, descriptors: u64) -> u32 {
    let carried = descriptors.saturating_sub(RESERVED) / 2;
    u32::try_from(carried)
        .unwrap_or(u32::MAX)
        .clamp(1, configured.max(1))
}

/// Raise the descriptor limit, and lower `limits.max_connections` to what
/// it can carry (saying so), so that the cap refuses before descriptors run out.
pub fn fit_connections(config: &mut crate::config::Config) {
    let Some(descriptors) = raise_limit() else {
        tracing::warn!(
            "the descriptor limit cannot be read; limits.max_connections applies as set"
        );
        return;
    };
    let configured = config.limits.max_connections;
    let cap = connection_cap(configured, descriptors);
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            descriptors,
            "limits.max_connections lowered to what the descriptor limit can carry \
             (two per connection); raise `ulimit -n` to allow more"
        );
        config.limits.max_connections = cap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptors() {
        assert_eq!(connection_cap(10_000, 1024), 448);
        assert_eq!(connection_cap(10_000, 1_048_576), 10_000);
        assert_eq!(connection_cap(100, 1024), 100);
        assert_eq!(connection_cap(10_000, 64), 1);
        assert_eq!(connection_cap(10_000, u64::MAX), 10_000);
    }
}
