//! `Range` request headers on blobs: one `bytes=` range, or none.

/// The part of a blob to send, as an inclusive byte span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSpan {
    pub start: u64,
    pub end: u64,
}

impl ByteSpan {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a span holds at least its first byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send everything with 200 (RFC 9110 lets a server
    /// ignore ranges it does not support, such as multi-range requests).
    Full,
    Partial(ByteSpan),
    Unsatisfiable,
}

/// Resolves a `Range` header against a blob of `total` bytes.
pub fn parse_range(header: Option<&str>, total: u64) -> RangeRequest {
    let Some(value) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if first.is_empty() {
        // Suffix range: the last N bytes.
        return match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if total > 0 => RangeRequest::Partial(ByteSpan {
                start: total.saturating_sub(n),
                end: total - 1,
            }),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        };
    }
    let Some(start) = parse(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse(last) {
            Some(end) if end >= start => Some(end),
            _ => return RangeRequest::Full,
        }
    };
    if start >= total {
        return RangeRequest::Unsatisfiable;
    }
    let end = end.map_or(total - 1, |e| e.min(total - 1));
    RangeRequest::Partial(ByteSpan { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteSpan { start, end })
    }

    #[test]
    fn open_and_closed_ranges() {
        assert_eq!(parse_range(Some("bytes=10-"), 100), span(10, 99));
        assert_eq!(parse_range(Some("bytes=10-19"), 100), span(10, 19));
        assert_eq!(parse_range(Some("bytes=0-0"), 100), span(0, 0));
        assert_eq!(parse_range(Some("bytes=90-500"), 100), span(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), span(90, 99));
        assert_eq!(parse_range(Some("bytes=-500"), 100), span(0, 99));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=200-300"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn ignored_forms_serve_everything() {
        for h in [
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=0-1,5-6",
            "bytes=-",
            "bytes=99999999999999999999999-",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(Some(h), 100), RangeRequest::Full, "{h}");
        }
        assert_eq!(parse_range(None, 100), RangeRequest::Full);
    }
}
