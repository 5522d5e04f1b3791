//! The object-storage tier against a real Ceph RGW (see `support::rgw`).

use crate::support::rgw::rgw;

#[test]
fn rgw_stores_and_returns_objects() {
    let Some(rgw) = rgw() else { return };
    let bucket = rgw.bucket("selftest");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    rgw.put_object(&bucket, "a/b", &bytes);
    assert_eq!(rgw.get_object(&bucket, "a/b").as_deref(), Some(&bytes[..]));
    assert_eq!(rgw.get_object(&bucket, "a/missing"), None);
    assert_eq!(rgw.keys(&bucket), vec!["a/b".to_string()]);
}
