//! (filled in the next commit)
