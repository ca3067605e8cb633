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
        half_close: true,
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

/// A table that went through changes answers every query as a table built from scratch with
/// the same routes would.
fn same_answers(a: &Table<()>, b: &Table<()>, queries: &[&str]) {
    for q in queries {
        for local in [ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.9")] {
            let name = |t: &Table<()>| t.lookup(local, Some(q)).map(|(id, how)| (t.route(id).name.clone(), how));
            assert_eq!(name(a), name(b), "{q} from {local}");
        }
    }
    assert_eq!(a.name_count(), b.name_count());
    assert_eq!(a.len(), b.len());
}

#[test]
fn changes_match_a_rebuild() {
    let t = sample();
    // Replace "shop" (a name moves to "wild", one is dropped, the IP changes), remove "v6", add
    // "new" with v6's name, in one change.
    let mut c = t.change();
    c.upsert(route("shop", &["*.shop.example.com", "more.example.org"], &["127.0.0.9"]));
    c.upsert(route("wild", &["*.example.com", "shop.example.com"], &[]));
    c.remove("v6");
    c.upsert(route("new", &["v6.example.net"], &["127.0.0.2"]));
    let (changed, stats, missing) = c.finish().unwrap();
    assert_eq!((stats.added, stats.replaced, stats.removed), (1, 2, 1));
    assert!(missing.is_empty());
    let rebuilt = Table::build(
        vec![
            route("shop", &["*.shop.example.com", "more.example.org"], &["127.0.0.9"]),
            route("wild", &["*.example.com", "shop.example.com"], &[]),
            route("default", &[], &[]),
            route("new", &["v6.example.net"], &["127.0.0.2"]),
        ],
        Some(RouteId(2)),
        None,
    )
    .unwrap();
    let queries =
        ["shop.example.com", "a.shop.example.com", "more.example.org", "v6.example.net", "x.example.com", "no.test"];
    same_answers(&changed, &rebuilt, &queries);
    assert_eq!(
        changed.lookup(ip("127.0.0.1"), None).map(|(id, _)| changed.route(id).name.clone()),
        Ok("default".into())
    );
    // The old table is untouched.
    same_answers(&t, &sample(), &queries);
    // A name claimed by another route is refused, and nothing changes.
    let mut c = changed.change();
    c.upsert(route("other", &["more.example.org"], &[]));
    let e = c.finish().map(|_| ()).unwrap_err();
    assert!(
        matches!(&e[0], BuildError::DuplicateName { name, first, second } if name == "more.example.org" && first == "shop" && second == "other"),
        "{e:?}"
    );
    // Removing the fallback's route is reported.
    let mut c = changed.change();
    c.remove("default");
    let (_, _, missing) = c.finish().unwrap();
    assert_eq!(missing, vec!["default".to_string()]);
}

#[test]
fn a_change_at_many_names_copies_few_shards() {
    let names: Vec<String> = (0..300_000).map(|i| format!("www{i}.example")).collect();
    let routes: Vec<Route<()>> = names
        .chunks(4)
        .enumerate()
        .map(|(i, c)| route(&format!("r{i}"), &c.iter().map(String::as_str).collect::<Vec<_>>(), &[]))
        .collect();
    let t = Table::build(routes, None, None).unwrap();
    assert!(t.shard_count() >= 4, "{}", t.shard_count());
    // One name added: one shard copied, the others shared.
    let mut c = t.change();
    c.upsert(route("r7", &["www28.example", "www29.example", "www30.example", "www31.example", "fresh.example"], &[]));
    let (t1, stats, _) = c.finish().unwrap();
    // It waits in the delta: no shard copied.
    assert_eq!((stats.replaced, stats.shards_touched, stats.delta), (1, 0, 1), "{stats:?}");
    assert_eq!(t1.name_count(), (300_001, 0));
    // Folded, it moves into its one shard; everything else is shared.
    let folded = t1.folded().unwrap();
    assert_eq!(folded.delta_len(), 0);
    assert_eq!(t1.names.shards_shared_with(&folded.names), t1.shard_count() - 1);
    assert!(folded.folded().is_none());
    let queries: Vec<String> = (0..40).map(|i| format!("www{i}.example")).chain(["fresh.example".into()]).collect();
    same_answers(&t1, &folded, &queries.iter().map(String::as_str).collect::<Vec<_>>());
    let mut c = t1.change();
    c.upsert(route("r7", &["www28.example", "fresh.example", "*.fresh.example"], &[]));
    c.remove("r8");
    let (t2, stats, _) = c.finish().unwrap();
    assert_eq!(stats.shards_touched, 0, "{stats:?}");
    assert_eq!(t2.name_count(), (300_000 - 3 - 4 + 1, 1));
    let find = |t: &Table<()>, n: &str| t.lookup(ip("127.0.0.1"), Some(n)).ok().map(|(id, _)| t.route(id).name.clone());
    assert_eq!(find(&t2, "www28.example").as_deref(), Some("r7"));
    assert_eq!(find(&t2, "www29.example"), None);
    assert_eq!(find(&t2, "www32.example"), None);
    assert_eq!(find(&t2, "a.fresh.example").as_deref(), Some("r7"));
    assert_eq!(find(&t2, "www33.example"), None, "r8 was removed");
    assert_eq!(find(&t2, "www36.example").as_deref(), Some("r9"));
    assert_eq!(find(&t, "www29.example").as_deref(), Some("r7"), "the old table is untouched");
    let queries: Vec<String> =
        (0..40).map(|i| format!("www{i}.example")).chain(["fresh.example".into(), "a.fresh.example".into()]).collect();
    same_answers(&t2, &t2.folded().unwrap(), &queries.iter().map(String::as_str).collect::<Vec<_>>());
    // The new route takes a freed id.
    let mut c = t2.change();
    c.upsert(route("r-new", &["brand.new"], &[]));
    let (t3, _, _) = c.finish().unwrap();
    assert_eq!(t3.id_of("r-new"), t.id_of("r8"));
    assert_eq!(t3.len(), t.len());
}

proptest! {
    /// The index agrees with a HashMap for any set of names, wildcards and queries.
    #[test]
    fn agrees_with_hashmap(names in proptest::collection::hash_set("[a-z0-9]{1,12}(\\.[a-z0-9]{1,8}){0,3}", 0..300),
                           wild in proptest::collection::hash_set("[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}", 0..50),
                           queries in proptest::collection::vec("[a-z0-9]{1,12}(\\.[a-z0-9]{1,8}){0,3}", 0..50)) {
        let names: Vec<String> = names.into_iter().collect();
        let wild: Vec<String> = wild.into_iter().collect();
        let mut b = NameIndexBuilder::with_capacity(names.len());
        let mut exact = std::collections::HashMap::new();
        let mut parents = std::collections::HashMap::new();
        for (i, n) in names.iter().enumerate() {
            b.push(n, Kind::Exact, RouteId(i as u32));
            exact.insert(n.clone(), RouteId(i as u32));
        }
        for (i, n) in wild.iter().enumerate() {
            b.push(n, Kind::Wildcard, RouteId(1000 + i as u32));
            parents.insert(n.clone(), RouteId(1000 + i as u32));
        }
        let idx = b.build().unwrap();
        for n in names.iter().chain(queries.iter()).chain(wild.iter()) {
            let expected = match exact.get(n) {
                Some(id) => Found::Exact(*id),
                None => match n.split_once('.').and_then(|(_, p)| parents.get(p)) {
                    Some(id) => Found::Wildcard(*id),
                    None => Found::None,
                },
            };
            prop_assert_eq!(idx.lookup(n), expected);
        }
    }

    /// Inserting and removing keys one by one (through copy-on-write edits) leaves an index that
    /// agrees with a HashMap, and every earlier index is unchanged.
    #[test]
    fn edits_agree_with_hashmap(ops in proptest::collection::vec((any::<bool>(), 0u32..400), 1..600)) {
        let mut idx = NameIndexBuilder::default().build().unwrap();
        let mut expected = std::collections::HashMap::new();
        for (insert, k) in ops {
            let key = format!("n{k}.example");
            let before = idx.clone();
            let mut e = idx.edit();
            if insert {
                let r = e.insert(&key, Kind::Exact, RouteId(k));
                prop_assert_eq!(r.is_err(), expected.contains_key(&key));
                expected.insert(key.clone(), RouteId(k));
            } else {
                let removed = e.remove(&key, Kind::Exact, RouteId(k));
                prop_assert_eq!(removed, expected.remove(&key).is_some());
            }
            idx = e.finish();
            prop_assert_eq!(before.get(&key, Kind::Exact).is_some(), before.lookup(&key) != Found::None);
        }
        prop_assert_eq!(idx.len(), expected.len());
        for k in 0..400 {
            let key = format!("n{k}.example");
            prop_assert_eq!(idx.get(&key, Kind::Exact), expected.get(&key).copied());
        }
    }

    /// Exact names and wildcards inserted, moved and removed through the delta, folded at any
    /// point: every lookup agrees with a model, before and after each fold, and the index
    /// lists exactly the model's keys.
    #[test]
    fn delta_and_folds_agree_with_a_model(ops in proptest::collection::vec((0u8..4, 0u32..60, any::<bool>()), 1..300)) {
        // A base built with keys, so that the shards and the delta both answer.
        let mut model: std::collections::HashMap<(String, bool), RouteId> = std::collections::HashMap::new();
        let mut b = NameIndexBuilder::default();
        for k in 0..30u32 {
            b.push(&format!("h{k}.d{}.test", k % 5), Kind::Exact, RouteId(k));
            model.insert((format!("h{k}.d{}.test", k % 5), false), RouteId(k));
        }
        b.push("d1.test", Kind::Wildcard, RouteId(100));
        model.insert(("d1.test".into(), true), RouteId(100));
        let mut idx = b.build().unwrap();
        for (op, k, wild) in ops {
            let (key, kind) = if wild { (format!("d{}.test", k % 7), Kind::Wildcard) } else { (format!("h{k}.d{}.test", k % 5), Kind::Exact) };
            let mk = (key.clone(), wild);
            match op {
                0 | 1 => {
                    let mut e = idx.edit();
                    let r = e.insert(&key, kind, RouteId(k + 1000));
                    prop_assert_eq!(r.err(), model.get(&mk).copied());
                    model.entry(mk).or_insert(RouteId(k + 1000));
                    idx = e.finish();
                }
                2 => {
                    let owner = model.get(&mk).copied().unwrap_or(RouteId(k));
                    let mut e = idx.edit();
                    prop_assert_eq!(e.remove(&key, kind, owner), model.remove(&mk).is_some());
                    idx = e.finish();
                }
                _ => {
                    if let Some(f) = idx.folded() {
                        prop_assert_eq!(f.delta_len(), 0);
                        idx = f;
                    }
                }
            }
            for q in 0..60u32 {
                let name = format!("h{q}.d{}.test", q % 5);
                let parent = format!("d{}.test", q % 5);
                let want = match (model.get(&(name.clone(), false)), model.get(&(parent, true))) {
                    (Some(r), _) => Found::Exact(*r),
                    (None, Some(r)) => Found::Wildcard(*r),
                    (None, None) => Found::None,
                };
                prop_assert_eq!(idx.lookup(&name), want, "{}", name);
            }
        }
        prop_assert_eq!(idx.len(), model.len());
        let mut listed: Vec<(String, bool, RouteId)> = idx.iter().map(|(k, kind, r)| (k.to_owned(), kind == Kind::Wildcard, r)).collect();
        listed.sort();
        let mut want: Vec<(String, bool, RouteId)> = model.into_iter().map(|((k, w), r)| (k, w, r)).collect();
        want.sort();
        prop_assert_eq!(listed, want);
    }
}

#[test]
fn a_delta_past_its_cap_is_folded_and_the_edit_goes_on_in_the_shards() {
    let mut idx = NameIndexBuilder::default().build().unwrap();
    // Small edits accumulate in the delta, up to its cap.
    for k in 0..4100u32 {
        let mut e = idx.edit();
        e.insert(&format!("k{k}.test"), Kind::Exact, RouteId(k)).unwrap();
        idx = e.finish();
    }
    assert!(idx.delta_len() < 4100, "{}", idx.delta_len());
    // One big edit: folds and writes to the shards.
    let mut e = idx.edit();
    for k in 4100..10_000u32 {
        e.insert(&format!("k{k}.test"), Kind::Exact, RouteId(k)).unwrap();
    }
    for k in (0..10_000u32).step_by(3) {
        assert!(e.remove(&format!("k{k}.test"), Kind::Exact, RouteId(k)));
    }
    let idx = e.finish();
    assert!(idx.delta_len() <= 4096, "{}", idx.delta_len());
    for k in 0..10_000u32 {
        let want = if k % 3 == 0 { Found::None } else { Found::Exact(RouteId(k)) };
        assert_eq!(idx.lookup(&format!("k{k}.test")), want, "k{k}");
    }
    assert_eq!(idx.len(), 10_000 - 3334);
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

#[test]
fn changes_keep_the_alpn_route_list() {
    let alpn = |name: &str, sni: &[&str], ips: &[&str], p: &[u8]| {
        let mut r = route(name, sni, ips);
        r.alpn_match = vec![p.to_vec()];
        r
    };
    let offers = |want: &'static [u8]| move |p: &[u8]| p == want;
    let lo = ip("127.0.0.1");
    let t =
        Table::build(vec![route("shop", &["shop.example.com"], &[]), alpn("a", &[], &[], b"x-a")], None, None).unwrap();
    // Added: an ALPN route sharing a name and taking a dedicated IP, kept out of both indexes.
    let mut c = t.change();
    c.upsert(alpn("b", &["shop.example.com"], &["127.0.0.7"], b"x-b"));
    let (t2, _, _) = c.finish().unwrap();
    assert_eq!(t2.lookup_alpn(lo, Some("shop.example.com"), offers(b"x-b")), t2.id_of("b"));
    assert_eq!(t2.lookup_alpn(lo, None, offers(b"x-a")), t2.id_of("a"));
    assert_eq!(t2.lookup(lo, Some("shop.example.com")).map(|(id, _)| id), Ok(t2.id_of("shop").unwrap()));
    assert_eq!(t2.lookup(ip("127.0.0.7"), None), Err(Miss::NoSni));
    // An ordinary route becoming an ALPN route gives up its names; and back again.
    let mut c = t2.change();
    c.upsert(alpn("shop", &["shop.example.com"], &[], b"x-shop"));
    let (t3, _, _) = c.finish().unwrap();
    assert_eq!(t3.lookup(lo, Some("shop.example.com")), Err(Miss::UnknownSni));
    assert_eq!(t3.lookup_alpn(lo, Some("shop.example.com"), offers(b"x-shop")), t3.id_of("shop"));
    let mut c = t3.change();
    c.upsert(route("shop", &["shop.example.com"], &["127.0.0.8"]));
    c.remove("a");
    let (t4, _, _) = c.finish().unwrap();
    assert_eq!(t4.lookup(lo, Some("shop.example.com")).map(|(id, _)| id), Ok(t4.id_of("shop").unwrap()));
    assert_eq!(t4.lookup(ip("127.0.0.8"), None).map(|(id, _)| id), Ok(t4.id_of("shop").unwrap()));
    assert_eq!(t4.lookup_alpn(lo, Some("shop.example.com"), offers(b"x-shop")), None);
    assert_eq!(t4.lookup_alpn(lo, None, offers(b"x-a")), None, "a removed ALPN route still answers");
    assert_eq!(t4.lookup_alpn(lo, Some("shop.example.com"), offers(b"x-b")), t4.id_of("b"));
    // The old tables answer as before (copy-on-write).
    assert_eq!(t.lookup_alpn(lo, None, offers(b"x-a")), t.id_of("a"));
    assert!(!t.has_alpn_routes() || t.lookup_alpn(lo, Some("shop.example.com"), offers(b"x-b")).is_none());
}

#[test]
fn same_as_compares_the_upstream_and_alpn_match() {
    let a = route("r", &["r.example"], &[]);
    assert!(a.same_as(&a.clone()));
    let mut b = a.clone();
    b.upstream.balance = Balance::RoundRobin;
    assert!(!a.same_as(&b), "balance");
    let mut b = a.clone();
    b.upstream.eject.after = 9;
    assert!(!a.same_as(&b), "ejection");
    let mut b = a.clone();
    b.upstream.health = Some(HealthCheck::default());
    assert!(!a.same_as(&b), "health check");
    let mut b = a.clone();
    b.alpn_match = vec![b"h2".to_vec()];
    assert!(!a.same_as(&b), "alpn_match");
    let mut b = a.clone();
    b.backends[0].weight = 3;
    assert!(!a.same_as(&b), "weight");
}
