//! Pure agent logic (filled by the agent work).
