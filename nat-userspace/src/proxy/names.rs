//! Host-name normalisation and the name table that picks an inside server.
//!
//! One normaliser serves every source of a name (TLS SNI, QUIC SNI, HTTP
//! Host, configuration), so that a name that routes from one source routes
//! the same from the others.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

/// RFC 1035 §2.3.4: 255 octets on the wire are 253 characters in text once
/// the length octets and the root label are taken off.
pub const MAX_NAME_LEN: usize = 253;

/// RFC 1035 §2.3.4.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name or a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Nothing left once one trailing dot was taken off.
    Empty,
    /// Longer than [`MAX_NAME_LEN`] (after one trailing dot was taken off).
    TooLong { len: usize },
    /// Two dots in a row, a leading dot, or two trailing dots.
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`].
    LabelTooLong { len: usize },
    /// A byte that is not a letter, digit, hyphen or dot (RFC 952/1123 LDH);
    /// non-ASCII names must arrive as A-labels (`xn--…`).
    InvalidByte { byte: u8, at: usize },
    /// A label starts or ends with `-` (RFC 952/1123).
    HyphenAtLabelEdge,
    /// A dotted-quad IPv4 address: RFC 6066 §3 forbids literals in SNI, and
    /// routing by address is the NAT table's job, not the name table's.
    IpLiteral,
    /// `*` is mixed with other characters in its label (`*a.example`,
    /// `a*.example`); RFC 6125 §6.4.3 allows such partial wildcards but we
    /// refuse them because they make "one label" matching ambiguous.
    PartialWildcard,
    /// `*` is not the left-most label (`a.*.example`).
    WildcardNotLeftmost,
    /// The pattern is `*` alone; a catch-all belongs in a default route.
    BareWildcard,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "empty name"),
            NameError::TooLong { len } => {
                write!(f, "name is {len} characters, more than {MAX_NAME_LEN}")
            }
            NameError::EmptyLabel => write!(f, "name has an empty label (\"..\" or a leading dot)"),
            NameError::LabelTooLong { len } => {
                write!(f, "label is {len} characters, more than {MAX_LABEL_LEN}")
            }
            NameError::InvalidByte { byte, at } => write!(
                f,
                "byte 0x{byte:02x} at position {at} is not a letter, digit, '-' or '.'"
            ),
            NameError::HyphenAtLabelEdge => write!(f, "a label starts or ends with '-'"),
            NameError::IpLiteral => write!(f, "an IPv4 address is not a host name"),
            NameError::PartialWildcard => {
                write!(f, "'*' must be a whole label, as in \"*.example.com\"")
            }
            NameError::WildcardNotLeftmost => write!(f, "'*' may only be the left-most label"),
            NameError::BareWildcard => {
                write!(f, "'*' alone matches everything; use a default route")
            }
        }
    }
}

impl std::error::Error for NameError {}

/// Checks that `name` is a DNS host name and returns its canonical form:
/// ASCII lower case, one trailing dot removed.
///
/// A single trailing dot is accepted because a fully-qualified name is the
/// same host (`example.com.`), and some clients send it in SNI even though
/// RFC 6066 §3 says not to.
pub fn normalize_dns_name(name: &str) -> Result<String, NameError> {
    normalize_dns_name_bytes(name.as_bytes())
}

/// [`normalize_dns_name`] for a name taken off the wire, which need not be
/// UTF-8 (a non-ASCII byte is reported as [`NameError::InvalidByte`]).
pub fn normalize_dns_name_bytes(name: &[u8]) -> Result<String, NameError> {
    let bytes = name.strip_suffix(b".").unwrap_or(name);
    check_ldh(bytes)?;
    if std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .is_some()
    {
        return Err(NameError::IpLiteral);
    }
    // check_ldh admitted only ASCII, so this cannot split a character.
    Ok(bytes
        .iter()
        .map(|b| b.to_ascii_lowercase() as char)
        .collect())
}

fn check_ldh(bytes: &[u8]) -> Result<(), NameError> {
    if bytes.is_empty() {
        return Err(NameError::Empty);
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: bytes.len() });
    }
    if let Some(at) = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err(NameError::InvalidByte {
            byte: bytes[at],
            at,
        });
    }
    for label in bytes.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong { len: label.len() });
        }
        if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return Err(NameError::HyphenAtLabelEdge);
        }
    }
    Ok(())
}

/// A checked routing pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Matches this name only (canonical form).
    Exact(String),
    /// `*.<suffix>`: matches one label followed by `suffix` (canonical form,
    /// without the `*.`).
    Wildcard(String),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Checks a configured pattern: an exact host name, or `*.` followed by a
/// host name. Case and one trailing dot are normalised away.
pub fn validate_pattern(pattern: &str) -> Result<Pattern, NameError> {
    let trimmed = pattern.strip_suffix('.').unwrap_or(pattern);
    if trimmed == "*" {
        return Err(NameError::BareWildcard);
    }
    let (first, rest) = match trimmed.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (trimmed, None),
    };
    if first == "*" {
        // Taken from `pattern`, not `trimmed`, so that normalize_dns_name
        // strips one trailing dot only, as it does for exact names.
        let suffix = &pattern[2..];
        if suffix.contains('*') {
            return Err(if suffix.split('.').any(|l| l == "*") {
                NameError::WildcardNotLeftmost
            } else {
                NameError::PartialWildcard
            });
        }
        return normalize_dns_name(suffix).map(Pattern::Wildcard);
    }
    if first.contains('*') {
        return Err(NameError::PartialWildcard);
    }
    if let Some(rest) = rest
        && rest.contains('*')
    {
        return Err(if rest.split('.').any(|l| l == "*") {
            NameError::WildcardNotLeftmost
        } else {
            NameError::PartialWildcard
        });
    }
    normalize_dns_name(pattern).map(Pattern::Exact)
}

/// How a lookup matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
}

/// Maps host-name patterns to values (typically an inside server).
///
/// An exact entry beats a wildcard one. With the one-label rule only one
/// wildcard can ever match a given name (`*.<name minus its first label>`),
/// so no "longest wildcard" tie-break is needed.
#[derive(Debug, Clone)]
pub struct NameTable<V> {
    exact: HashMap<String, V>,
    wildcard: HashMap<String, V>,
}

impl<V> Default for NameTable<V> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<V> NameTable<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the entry for `pattern`; returns the value it replaced.
    pub fn insert(&mut self, pattern: &str, value: V) -> Result<Option<V>, NameError> {
        Ok(self.insert_pattern(validate_pattern(pattern)?, value))
    }

    /// Same as [`insert`](Self::insert) with an already validated pattern.
    pub fn insert_pattern(&mut self, pattern: Pattern, value: V) -> Option<V> {
        match pattern {
            Pattern::Exact(name) => self.exact.insert(name, value),
            Pattern::Wildcard(suffix) => self.wildcard.insert(suffix, value),
        }
    }

    /// Removes the entry for exactly this pattern (not whatever it would match).
    pub fn remove(&mut self, pattern: &str) -> Result<Option<V>, NameError> {
        Ok(match validate_pattern(pattern)? {
            Pattern::Exact(name) => self.exact.remove(&name),
            Pattern::Wildcard(suffix) => self.wildcard.remove(&suffix),
        })
    }

    /// The value for host `name`, normalised first. A name that is not a
    /// valid host name matches nothing.
    pub fn get(&self, name: &str) -> Option<&V> {
        self.lookup(name).map(|(_, v)| v)
    }

    /// Like [`get`](Self::get), and tells whether an exact or a wildcard
    /// entry matched.
    pub fn lookup(&self, name: &str) -> Option<(MatchKind, &V)> {
        let name = normalize_dns_name(name).ok()?;
        self.lookup_normalized(&name)
    }

    /// Lookup for a name already in canonical form (as `ClientHelloInfo::sni`
    /// is), skipping the second normalisation.
    pub fn lookup_normalized(&self, name: &str) -> Option<(MatchKind, &V)> {
        if let Some(v) = self.exact.get(name) {
            return Some((MatchKind::Exact, v));
        }
        // One-label rule (RFC 6125 §6.4.3): the wildcard stands for exactly
        // the first label, so only the parent of `name` can be a suffix.
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).map(|v| (MatchKind::Wildcard, v))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Pattern, &V)> {
        self.exact
            .iter()
            .map(|(k, v)| (Pattern::Exact(k.clone()), v))
            .chain(
                self.wildcard
                    .iter()
                    .map(|(k, v)| (Pattern::Wildcard(k.clone()), v)),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalize_lowercases_and_strips_one_trailing_dot() {
        assert_eq!(
            normalize_dns_name("WWW.Example.COM.").unwrap(),
            "www.example.com"
        );
        assert_eq!(normalize_dns_name("a").unwrap(), "a");
        assert_eq!(
            normalize_dns_name("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_dns_name("a1-b2.c3").unwrap(), "a1-b2.c3");
    }

    #[test]
    fn normalize_rejects_bad_names() {
        assert_eq!(normalize_dns_name(""), Err(NameError::Empty));
        assert_eq!(normalize_dns_name("."), Err(NameError::Empty));
        assert_eq!(normalize_dns_name("a.."), Err(NameError::EmptyLabel));
        assert_eq!(normalize_dns_name(".a"), Err(NameError::EmptyLabel));
        assert_eq!(normalize_dns_name("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(
            normalize_dns_name("a_b.example"),
            Err(NameError::InvalidByte { byte: b'_', at: 1 })
        );
        assert_eq!(
            normalize_dns_name("bücher.example"),
            Err(NameError::InvalidByte { byte: 0xc3, at: 1 })
        );
        assert_eq!(
            normalize_dns_name("a b"),
            Err(NameError::InvalidByte { byte: b' ', at: 1 })
        );
        assert_eq!(
            normalize_dns_name("-a.example"),
            Err(NameError::HyphenAtLabelEdge)
        );
        assert_eq!(
            normalize_dns_name("a-.example"),
            Err(NameError::HyphenAtLabelEdge)
        );
        assert_eq!(normalize_dns_name("192.168.0.1"), Err(NameError::IpLiteral));
        assert_eq!(
            normalize_dns_name("192.168.0.1."),
            Err(NameError::IpLiteral)
        );
        assert!(matches!(
            normalize_dns_name("[::1]"),
            Err(NameError::InvalidByte { .. })
        ));
        assert_eq!(
            normalize_dns_name("*.example"),
            Err(NameError::InvalidByte { byte: b'*', at: 0 })
        );
    }

    #[test]
    fn normalize_enforces_length_limits() {
        let label63 = "a".repeat(63);
        assert!(normalize_dns_name(&label63).is_ok());
        assert_eq!(
            normalize_dns_name(&"a".repeat(64)),
            Err(NameError::LabelTooLong { len: 64 })
        );
        // 4 * 63 + 3 dots = 255; trim to exactly 253.
        let name253 = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
        assert_eq!(name253.len(), 253);
        assert!(normalize_dns_name(&name253).is_ok());
        assert!(normalize_dns_name(&format!("{name253}.")).is_ok());
        let name254 = format!("{name253}b");
        assert_eq!(
            normalize_dns_name(&name254),
            Err(NameError::TooLong { len: 254 })
        );
    }

    #[test]
    fn validate_pattern_accepts_exact_and_wildcard() {
        assert_eq!(
            validate_pattern("Green.Example.").unwrap(),
            Pattern::Exact("green.example".into())
        );
        assert_eq!(
            validate_pattern("*.Green.Example").unwrap(),
            Pattern::Wildcard("green.example".into())
        );
        assert_eq!(
            validate_pattern("*.green.example.").unwrap(),
            Pattern::Wildcard("green.example".into())
        );
        assert_eq!(
            validate_pattern("*.lan").unwrap(),
            Pattern::Wildcard("lan".into())
        );
        assert_eq!(
            validate_pattern("*.green.example").unwrap().to_string(),
            "*.green.example"
        );
    }

    #[test]
    fn validate_pattern_rejects_bad_patterns() {
        assert_eq!(
            validate_pattern("*a.example"),
            Err(NameError::PartialWildcard)
        );
        assert_eq!(
            validate_pattern("a*.example"),
            Err(NameError::PartialWildcard)
        );
        assert_eq!(
            validate_pattern("**.example"),
            Err(NameError::PartialWildcard)
        );
        assert_eq!(
            validate_pattern("a.*.example"),
            Err(NameError::WildcardNotLeftmost)
        );
        assert_eq!(
            validate_pattern("*.*.example"),
            Err(NameError::WildcardNotLeftmost)
        );
        assert_eq!(
            validate_pattern("a.b*.example"),
            Err(NameError::PartialWildcard)
        );
        assert_eq!(
            validate_pattern("*.a*.example"),
            Err(NameError::PartialWildcard)
        );
        assert_eq!(validate_pattern("*"), Err(NameError::BareWildcard));
        assert_eq!(validate_pattern("*."), Err(NameError::BareWildcard));
        assert_eq!(validate_pattern("*.."), Err(NameError::Empty));
        assert_eq!(validate_pattern("*.example.."), Err(NameError::EmptyLabel));
        assert_eq!(validate_pattern(""), Err(NameError::Empty));
        assert_eq!(validate_pattern("a..example"), Err(NameError::EmptyLabel));
        assert_eq!(validate_pattern("*..example"), Err(NameError::EmptyLabel));
        assert_eq!(validate_pattern(".example"), Err(NameError::EmptyLabel));
        assert_eq!(validate_pattern("10.0.0.1"), Err(NameError::IpLiteral));
        assert_eq!(
            validate_pattern("a_b.example"),
            Err(NameError::InvalidByte { byte: b'_', at: 1 })
        );
    }

    #[test]
    fn errors_display_what_was_wrong() {
        assert_eq!(
            NameError::InvalidByte { byte: b'_', at: 3 }.to_string(),
            "byte 0x5f at position 3 is not a letter, digit, '-' or '.'"
        );
        assert!(
            NameError::PartialWildcard
                .to_string()
                .contains("whole label")
        );
    }

    fn table() -> NameTable<&'static str> {
        let mut t = NameTable::new();
        t.insert("*.green.example", "wild-green").unwrap();
        t.insert("www.green.example", "exact-www").unwrap();
        t.insert("blue.example", "blue").unwrap();
        t
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let t = table();
        assert_eq!(
            t.lookup("a.green.example"),
            Some((MatchKind::Wildcard, &"wild-green"))
        );
        assert_eq!(t.get("green.example"), None);
        assert_eq!(t.get("a.b.green.example"), None);
        assert_eq!(t.get("agreen.example"), None);
    }

    #[test]
    fn exact_beats_wildcard() {
        let t = table();
        assert_eq!(
            t.lookup("www.green.example"),
            Some((MatchKind::Exact, &"exact-www"))
        );
        assert_eq!(
            t.lookup("WWW.GREEN.EXAMPLE."),
            Some((MatchKind::Exact, &"exact-www"))
        );
    }

    #[test]
    fn lookup_is_case_insensitive_and_ignores_trailing_dot() {
        let t = table();
        assert_eq!(t.get("Blue.Example."), Some(&"blue"));
        assert_eq!(t.get("A.Green.Example."), Some(&"wild-green"));
        assert_eq!(t.get("blue.example.."), None);
        assert_eq!(t.get("x.blue.example"), None);
        assert_eq!(t.get(""), None);
        assert_eq!(t.get("bad_name.green.example"), None);
    }

    #[test]
    fn insert_replace_remove() {
        let mut t = table();
        assert_eq!(t.len(), 3);
        assert_eq!(t.insert("BLUE.example", "blue2").unwrap(), Some("blue"));
        assert_eq!(t.get("blue.example"), Some(&"blue2"));
        assert_eq!(t.remove("*.green.example").unwrap(), Some("wild-green"));
        assert_eq!(t.get("a.green.example"), None);
        assert_eq!(t.get("www.green.example"), Some(&"exact-www"));
        assert_eq!(t.remove("*.green.example").unwrap(), None);
        assert_eq!(t.insert("a.*.x", "no"), Err(NameError::WildcardNotLeftmost));
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
        let mut patterns: Vec<String> = t.iter().map(|(p, _)| p.to_string()).collect();
        patterns.sort();
        assert_eq!(patterns, ["blue.example", "www.green.example"]);
    }

    #[test]
    fn generic_over_value_type() {
        let mut t: NameTable<std::net::SocketAddr> = NameTable::new();
        let addr: std::net::SocketAddr = "10.0.0.5:443".parse().unwrap();
        t.insert("*.lan", addr).unwrap();
        assert_eq!(t.get("nas.lan"), Some(&addr));
    }

    proptest! {
        #[test]
        fn normalize_never_panics_and_is_idempotent(s in "\\PC{0,300}") {
            if let Ok(n) = normalize_dns_name(&s) {
                prop_assert_eq!(normalize_dns_name(&n), Ok(n.clone()));
                prop_assert!(n.len() <= MAX_NAME_LEN);
                prop_assert!(!n.ends_with('.'));
            }
        }

        #[test]
        fn wildcard_matches_any_single_valid_label(label in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?") {
            let t = table();
            let host = format!("{label}.green.example");
            let expected = if label == "www" { "exact-www" } else { "wild-green" };
            prop_assert_eq!(t.get(&host), Some(&expected));
            let deeper = format!("x.{label}.green.example");
            prop_assert_eq!(t.get(&deeper), None);
        }
    }
}
