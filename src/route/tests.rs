use super::*;
use proptest::prelude::*;

fn route(name: &str, sni: &[&str], ips: &[&str]) -> Route<()> {
    Route {
        name: name.into(),
        action: Action::Passthrough,
        sni: sni.iter().map(|s| normalize_pattern(s).unwrap()).collect(),
        dedicated_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        min_tls: TlsVersion::TLS12,
        backends: vec!["127.0.0.1:1".parse().unwrap()],
        proxy_protocol: ProxyProtocol::None,
        upstream: Upstream::default(),
        alpn_match: Vec::new(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sample() -> Table<()> {
    Table::build(
        vec![
            route("shop", &["shop.example.com", "*.shop.example.com"], &["127.0.0.2"]),
            route("wild", &["*.example.com"], &[]),
            route("default", &[], &[]),
            route("v6", &["v6.example.net"], &["::1"]),
        ],
        Some(RouteId(2)),
        None,
    )
    .unwrap()
}

#[test]
fn precedence() {
    let t = sample();
    let shared = ip("127.0.0.1");
    assert_eq!(t.lookup(shared, Some("shop.example.com")), Ok((RouteId(0), Match::ExactSni)));
    assert_eq!(t.lookup(shared, Some("a.shop.example.com")), Ok((RouteId(0), Match::WildcardSni)));
    assert_eq!(t.lookup(shared, Some("a.example.com")), Ok((RouteId(1), Match::WildcardSni)));
    // One label only: neither the parent itself nor two labels deep.
    assert_eq!(t.lookup(shared, Some("example.com")), Err(Miss::UnknownSni));
    assert_eq!(t.lookup(shared, Some("a.b.example.com")), Err(Miss::UnknownSni));
    assert_eq!(t.lookup(shared, None), Ok((RouteId(2), Match::NoSniFallback)));
    // The dedicated IP wins over any SNI, and works without one.
    let dedicated = ip("127.0.0.2");
    assert_eq!(t.lookup(dedicated, None), Ok((RouteId(0), Match::DedicatedIp)));
    assert_eq!(t.lookup(dedicated, Some("a.example.com")), Ok((RouteId(0), Match::DedicatedIp)));
    assert_eq!(t.lookup(ip("::1"), None), Ok((RouteId(3), Match::DedicatedIp)));
    assert_eq!(t.lookup(ip("::ffff:127.0.0.2"), None), Ok((RouteId(0), Match::DedicatedIp)));
}

#[test]
fn fallbacks_and_drops() {
    let t = Table::build(vec![route("a", &["a.test"], &[])], None, Some(RouteId(0))).unwrap();
    assert_eq!(t.lookup(ip("127.0.0.1"), None), Err(Miss::NoSni));
    assert_eq!(t.lookup(ip("127.0.0.1"), Some("zzz.test")), Ok((RouteId(0), Match::UnknownSniFallback)));
    let empty = Table::<()>::build(vec![], None, None).unwrap();
    assert_eq!(empty.lookup(ip("127.0.0.1"), Some("a.test")), Err(Miss::UnknownSni));
}

#[test]
fn duplicates_are_rejected() {
    let e = Table::build(vec![route("a", &["x.test"], &[]), route("b", &["X.test."], &[])], None, None);
    assert!(matches!(e, Err(BuildError::DuplicateName { ref name, .. }) if name == "x.test"), "{e:?}");
    let e = Table::build(vec![route("a", &["*.x.test"], &[]), route("b", &["*.x.test"], &[])], None, None);
    assert!(matches!(e, Err(BuildError::DuplicateName { ref name, .. }) if name == "*.x.test"), "{e:?}");
    let e = Table::build(vec![route("a", &[], &["127.0.0.2"]), route("b", &[], &["127.0.0.2"])], None, None);
    assert!(matches!(e, Err(BuildError::DuplicateIp { .. })), "{e:?}");
    // An exact name and a wildcard over the same parent do not collide.
    assert!(Table::build(vec![route("a", &["x.test"], &[]), route("b", &["*.x.test"], &[])], None, None).is_ok());
}

#[test]
fn patterns() {
    assert_eq!(normalize_pattern("WWW.Example.COM.").as_deref(), Ok("www.example.com"));
    assert_eq!(normalize_pattern("*.com").as_deref(), Ok("*.com"));
    assert_eq!(normalize_pattern("a.*.example.com"), Err(PatternError::BadWildcard));
    assert_eq!(normalize_pattern("*"), Err(PatternError::BareWildcard));
    assert_eq!(normalize_pattern("*x.example.com"), Err(PatternError::BadWildcard));
    assert_eq!(normalize_pattern(""), Err(PatternError::Empty));
    assert_eq!(normalize_pattern("a..b"), Err(PatternError::EmptyLabel));
    assert_eq!(normalize_pattern("127.0.0.1"), Err(PatternError::IpLiteral));
    assert_eq!(normalize_pattern("::1"), Err(PatternError::IpLiteral));
    assert_eq!(normalize_pattern("a b.com"), Err(PatternError::BadChar(' ')));
    assert_eq!(normalize_pattern(&"a".repeat(64)), Err(PatternError::LabelTooLong));
    let long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
    assert_eq!(long.len(), 254);
    assert_eq!(normalize_pattern(&long), Err(PatternError::TooLong));
    assert!(normalize_pattern(&long[1..]).is_ok());
}

#[test]
fn many_names() {
    let names: Vec<String> = (0..200_000).map(|i| format!("site{i}.customer{}.example", i % 977)).collect();
    let mut routes = Vec::new();
    for chunk in names.chunks(1000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        routes.push(route(&format!("r{}", routes.len()), &refs, &[]));
    }
    let t = Table::build(routes, None, None).unwrap();
    assert_eq!(t.name_count(), (200_000, 0));
    for (i, n) in names.iter().enumerate() {
        assert_eq!(t.lookup(ip("127.0.0.1"), Some(n)), Ok((RouteId((i / 1000) as u32), Match::ExactSni)));
    }
    assert_eq!(t.lookup(ip("127.0.0.1"), Some("site0.customer1.example")), Err(Miss::UnknownSni));
}

proptest! {
    /// The index agrees with a HashMap for any set of names and any query.
    #[test]
    fn agrees_with_hashmap(names in proptest::collection::hash_set("[a-z0-9]{1,12}(\\.[a-z0-9]{1,8}){0,3}", 0..300),
                           queries in proptest::collection::vec("[a-z0-9]{1,12}(\\.[a-z0-9]{1,8}){0,3}", 0..50)) {
        let names: Vec<String> = names.into_iter().collect();
        let mut b = NameIndexBuilder::with_capacity(names.len());
        let mut expected = std::collections::HashMap::new();
        for (i, n) in names.iter().enumerate() {
            b.push(n, RouteId(i as u32));
            expected.insert(n.clone(), RouteId(i as u32));
        }
        let idx = b.build().unwrap();
        for n in names.iter().chain(queries.iter()) {
            prop_assert_eq!(idx.get(n), expected.get(n).copied());
        }
    }
}

#[test]
fn alpn_routes_take_their_scope_first_and_stay_out_of_the_name_index() {
    let mut acme_all = route("acme", &[], &[]);
    acme_all.alpn_match = vec![b"acme-tls/1".to_vec()];
    // Shares a name with "shop": allowed, since ALPN routes are not in the name index.
    let mut scoped = route("scoped", &["shop.example.com", "*.wild.example.net"], &["127.0.0.9"]);
    scoped.alpn_match = vec![b"x-test".to_vec(), b"x-other".to_vec()];
    let t = Table::build(vec![route("shop", &["shop.example.com"], &[]), scoped, acme_all], None, None).unwrap();
    assert!(t.has_alpn_routes());
    let offers = |list: &'static [&'static [u8]]| move |p: &[u8]| list.contains(&p);
    let lo = ip("127.0.0.1");
    assert_eq!(t.lookup_alpn(lo, Some("shop.example.com"), offers(&[b"h2"])), None);
    assert_eq!(t.lookup_alpn(lo, Some("shop.example.com"), offers(&[b"h2", b"acme-tls/1"])), Some(RouteId(2)));
    assert_eq!(t.lookup_alpn(lo, None, offers(&[b"acme-tls/1"])), Some(RouteId(2)));
    assert_eq!(t.lookup_alpn(lo, Some("shop.example.com"), offers(&[b"x-other"])), Some(RouteId(1)));
    assert_eq!(t.lookup_alpn(lo, Some("a.wild.example.net"), offers(&[b"x-test"])), Some(RouteId(1)));
    assert_eq!(t.lookup_alpn(lo, Some("a.b.wild.example.net"), offers(&[b"x-test"])), None);
    assert_eq!(t.lookup_alpn(lo, Some("other.example.com"), offers(&[b"x-test"])), None);
    assert_eq!(t.lookup_alpn(ip("::ffff:127.0.0.9"), None, offers(&[b"x-test"])), Some(RouteId(1)));
    // The ordinary lookup does not see ALPN routes.
    assert_eq!(t.lookup(lo, Some("shop.example.com")), Ok((RouteId(0), Match::ExactSni)));
    assert_eq!(t.lookup(ip("127.0.0.9"), Some("nothing.example")), Err(Miss::UnknownSni));
    assert!(!sample().has_alpn_routes());
}
