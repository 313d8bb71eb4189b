//! Per-attempt write ids: how a retried write recognises its own landed attempt.

/// A random id unique to one logical write (a lease, a commit, a mark, ...). It is stored in
/// the item by the write, so when the SDK retries a write whose answer was lost and the retry's
/// condition fails, the old item returned tells "mine, already applied" from "someone else's".
pub fn new_write_id() -> String {
    let mut bytes = [0u8; 12];
    // If the OS random source fails, fall back to the process id and time: uniqueness per
    // attempt is what matters, not unpredictability.
    if getrandom::fill(&mut bytes).is_err() {
        return format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
