//! Free-form text from the wire, the store or the cluster, made safe to keep and to show.

/// What ends a string that was cut.
pub const TRUNCATED: &str = "… (truncated)";

/// `s` when it has at most `max` bytes; otherwise its longest prefix that ends on a char
/// boundary and leaves room for [`TRUNCATED`], followed by it. The result has at most `max`
/// bytes (when `max` is shorter than the marker, just the prefix).
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let (room, marker) = match max.checked_sub(TRUNCATED.len()) {
        Some(room) => (room, TRUNCATED),
        None => (max, ""),
    };
    let mut cut = room;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + marker.len());
    out.push_str(s.get(..cut).unwrap_or_default());
    out.push_str(marker);
    out
}

/// `s` when it has at most `max` bytes; otherwise its longest suffix of at most `max` bytes
/// that starts on a char boundary (log tails keep their end).
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s.get(start..).unwrap_or_default()
}

/// Unicode's Cc (controls), Cf (format: bidi controls such as U+202E, zero-width characters
/// such as U+200B, the BOM U+FEFF, tags), Zl and Zp, as of Unicode 16: characters that must
/// not reach an annotation, an Event or a log line from a directive. Both the scheduler
/// (at admission) and the agent (before writing) refuse them.
pub fn is_invisible(c: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let u = u32::from(c);
    c.is_control() || FORMAT.iter().any(|(lo, hi)| (*lo..=*hi).contains(&u))
}

/// A short, escaped quotation of a value for an error message (at most 64 characters of it).
pub fn quoted(v: &str) -> String {
    const QUOTE_CHARS: usize = 64;
    match v.char_indices().nth(QUOTE_CHARS) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!(
            "{:?}… ({} bytes)",
            v.get(..cut).unwrap_or_default(),
            v.len()
        ),
    }
}
