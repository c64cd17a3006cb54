//! Default protocol limits (all configurable on the server).

/// Size limits enforced on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted WebSocket frame / message in bytes (larger → close 1009).
    pub max_frame_bytes: usize,
    /// Largest accepted event `data` in bytes of JSON (larger → error `too_large`).
    pub max_data_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1024 * 1024,
            max_data_bytes: 64 * 1024,
        }
    }
}
