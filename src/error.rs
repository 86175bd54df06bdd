//! The one error type of rewire: every failure a user, a file or a shape can cause is a
//! value of [`Error`], with a message that says what was wrong and where.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure rewire reports.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// Two operands whose dimensions must agree do not.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// the operation that checked the shapes
        op: &'static str,
        /// what disagreed, with the numbers
        detail: String,
    },
    /// A sparse structure breaks one of its invariants.
    #[error("invalid {format} pattern: {detail}")]
    InvalidPattern {
        /// "CSR" or "BSR"
        format: &'static str,
        /// which invariant, at which row / entry
        detail: String,
    },
    /// A buffer has the wrong length.
    #[error("length mismatch for {what}: expected {expected}, got {got}")]
    Length {
        /// the buffer
        what: &'static str,
        /// the length it must have
        expected: usize,
        /// the length it has
        got: usize,
    },
    /// A parameter outside its valid range (a sparsity of 1.5, a zero block size, ...).
    #[error("invalid argument {name}: {detail}")]
    InvalidArgument {
        /// the parameter
        name: &'static str,
        /// why it is invalid
        detail: String,
    },
    /// A size too large for the u32 indices rewire uses.
    #[error("{what} = {value} exceeds the u32 index range")]
    TooLarge {
        /// what overflowed
        what: &'static str,
        /// its value
        value: usize,
    },
    /// The CUDA backend was asked for but cannot be used.
    #[error("CUDA unavailable: {0}")]
    Cuda(String),
    /// A file that exists but holds something other than what it should (bad magic,
    /// truncated, wrong dimensions, ...).
    #[error("bad file {path}: {detail}")]
    Format {
        /// file involved
        path: String,
        /// what is wrong with it
        detail: String,
    },
    /// Training cannot go on: its state is not what a step needs.
    #[error("training failed: {0}")]
    Training(String),
    /// Training diverged: the loss or the weights stopped being finite numbers (a
    /// learning rate too high, most often). A property of the run's settings, not a
    /// fault: `rewire compare` records it and goes on to the next run.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// An I/O failure, with the path involved.
    #[error("I/O error on {path}: {detail}")]
    Io {
        /// file involved
        path: String,
        /// the operating system's message
        detail: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, err: impl fmt::Display) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            detail: err.to_string(),
        }
    }

    /// An [`Error::Format`] for `path`.
    pub fn format(path: impl AsRef<std::path::Path>, detail: impl fmt::Display) -> Self {
        Error::Format {
            path: path.as_ref().display().to_string(),
            detail: detail.to_string(),
        }
    }

    /// A [`Error::Shape`] for operation `op`.
    pub fn shape(op: &'static str, detail: impl fmt::Display) -> Self {
        Error::Shape {
            op,
            detail: detail.to_string(),
        }
    }

    /// A [`Error::InvalidArgument`] for parameter `name`.
    pub fn arg(name: &'static str, detail: impl fmt::Display) -> Self {
        Error::InvalidArgument {
            name,
            detail: detail.to_string(),
        }
    }
}

/// Checks that a buffer has the expected length.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            got,
        })
    }
}

/// Checks that a buffer holds a `rows × cols` matrix, without overflow in the product.
pub(crate) fn check_dims(what: &'static str, rows: usize, cols: usize, got: usize) -> Result<()> {
    match rows.checked_mul(cols) {
        Some(expected) => check_len(what, expected, got),
        None => Err(Error::TooLarge {
            what,
            value: usize::MAX,
        }),
    }
}

/// Bytes of memory available to new allocations, where the system says: `MemAvailable`
/// of `/proc/meminfo`, lowered to the room left under this process's cgroup limit
/// (v2 `memory.max`, v1 `memory.limit_in_bytes`) where one is set; `None` elsewhere.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let system = kb.saturating_mul(1024);
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let cgroup = [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ]
    .iter()
    .find_map(|(limit, used)| Some(read(limit)?.saturating_sub(read(used).unwrap_or(0))));
    Some(cgroup.map_or(system, |c| c.min(system)))
}

/// An [`Error::InvalidArgument`] for `name` where `what` would need `need` bytes and the
/// machine has fewer available: an error before the allocation rather than an abort
/// part way through it. Passes where the available memory is unknown.
pub(crate) fn check_memory(name: &'static str, what: impl fmt::Display, need: u64) -> Result<()> {
    match available_memory() {
        Some(have) if need > have => Err(Error::arg(
            name,
            format!(
                "{what} needs about {:.1} GB of memory; {:.1} GB is available",
                need as f64 / 1e9,
                have as f64 / 1e9
            ),
        )),
        _ => Ok(()),
    }
}
