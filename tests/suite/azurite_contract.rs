//! The Azure Blob adapter against Azurite: the same blob store contract the
//! filesystem store passes (`common::contract::blob_store_contract`), once
//! with account-key (Shared Key) auth and once with an account SAS, plus
//! what only this adapter has: staged block uploads with conditions, paged
//! listing, container existence, and errors that never carry a secret.
//!
//! Needs `bash scripts/install-azurite.sh` (fails, never skips, without it).

use crate::common;

use std::sync::Arc;

use crate::common::contract::{blob_store_contract, unique_name};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use common::azurite::{ACCOUNT, ACCOUNT_KEY, Azurite};
use hubflow::azure::shared_key::hmac_sha256_base64;
use hubflow::azure::{AzureAuthConfig, AzureBlobConfig, AzureBlobStore};
use hubflow::source::SecretString;
use hubflow_actors::ports::{BlobError, BlobStore, PutCondition};

/// An account SAS for Azurite's account: blob service, every resource type,
/// read/write/delete/list/add/create, valid for a day, http or https.
fn account_sas(account: &str, key: &str) -> String {
    let version = "2020-12-06";
    let expiry = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (permissions, services, resource_types, protocol) = ("rwdlac", "b", "sco", "https,http");
    // Account SAS string-to-sign, version 2020-12-06 and later (the empty
    // fields are start, IP range and encryption scope).
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n{protocol}\n{version}\n\n"
    );
    let key = BASE64.decode(key).unwrap();
    let sig = hmac_sha256_base64(&key, &to_sign);
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", version)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("se", &expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &sig)
        .finish()
}

fn store_for(config: AzureBlobConfig) -> AzureBlobStore {
    let settings = config.validate().expect("valid azurite config");
    AzureBlobStore::new(&settings).expect("azure blob store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_with_an_account_key() {
    let azurite = Azurite::start().await;
    // Two blobs per listing page, so listings follow continuation markers.
    let store = azurite.account_key_store().with_list_page_size(2);
    blob_store_contract(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_with_an_account_sas() {
    let azurite = Azurite::start().await;
    let sas = account_sas(ACCOUNT, ACCOUNT_KEY);
    // As an operator would paste it: the account URL with the token.
    let sas_url = format!("{}?{sas}", azurite.account_url);
    let config = AzureBlobConfig::new(
        azurite.account_url.clone(),
        AzureAuthConfig::Sas {
            sas: SecretString::literal(sas_url),
        },
    );
    let store = store_for(config).with_list_page_size(3);
    blob_store_contract(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_uploads_keep_their_conditions() {
    let azurite = Azurite::start().await;
    let mut config = azurite.account_key_config();
    config.block_size_bytes = 64 * 1024;
    config.upload_concurrency = 3;
    let store = store_for(config);
    let c = unique_name("staged");
    store.create_container(&c).await.unwrap();

    // 5.5 blocks: staged, committed as one block list.
    let data: Vec<u8> = (0..(64 * 1024 * 11 / 2)).map(|i| (i % 251) as u8).collect();
    let first = store
        .put(
            &c,
            "big/blob.bin",
            Bytes::from(data.clone()),
            PutCondition::IfNoneMatch,
        )
        .await
        .expect("staged IfNoneMatch put of a new blob");
    assert_eq!(first.size, data.len() as u64);
    let (got, props) = store.get(&c, "big/blob.bin").await.unwrap();
    assert_eq!(got.as_ref(), data.as_slice(), "staged upload reads back");
    assert_eq!(props.etag, first.etag);
    let range = store
        .get_range(&c, "big/blob.bin", 65_000..140_000)
        .await
        .unwrap();
    assert_eq!(
        range.as_ref(),
        &data[65_000..140_000],
        "range across blocks"
    );

    match store
        .put(
            &c,
            "big/blob.bin",
            Bytes::from(data.clone()),
            PutCondition::IfNoneMatch,
        )
        .await
    {
        Err(BlobError::AlreadyExists { container, name }) => {
            assert_eq!(
                (container.as_str(), name.as_str()),
                (c.as_str(), "big/blob.bin")
            );
        }
        other => panic!("staged IfNoneMatch over an existing blob: {other:?}"),
    }
    let mut changed = data.clone();
    changed[0] ^= 0xff;
    let second = store
        .put(
            &c,
            "big/blob.bin",
            Bytes::from(changed.clone()),
            PutCondition::IfMatch(first.etag.clone()),
        )
        .await
        .expect("staged IfMatch put with the current etag");
    assert_ne!(second.etag, first.etag);
    match store
        .put(
            &c,
            "big/blob.bin",
            Bytes::from(data.clone()),
            PutCondition::IfMatch(first.etag.clone()),
        )
        .await
    {
        Err(BlobError::PreconditionFailed { .. }) => {}
        other => panic!("staged IfMatch with a stale etag: {other:?}"),
    }
    let (got, _) = store.get(&c, "big/blob.bin").await.unwrap();
    assert_eq!(
        got.as_ref(),
        changed.as_slice(),
        "refused staged puts do not write"
    );
    // No uncommitted blocks or extra blobs are visible.
    let listed = store.list(&c, "").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].size, changed.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_existence_and_safe_errors() {
    let azurite = Azurite::start().await;
    let store = azurite.account_key_store().with_list_page_size(5);
    let c = unique_name("paging");
    assert!(!store.container_exists(&c).await.unwrap());
    store.create_container(&c).await.unwrap();
    assert!(store.container_exists(&c).await.unwrap());

    let names: Vec<String> = (0..23).map(|i| format!("p/{:03}", 22 - i)).collect();
    for name in &names {
        store
            .put(&c, name, Bytes::from(name.clone()), PutCondition::None)
            .await
            .unwrap();
    }
    let listed: Vec<String> = store
        .list(&c, "p/")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let mut want = names.clone();
    want.sort();
    assert_eq!(listed, want, "23 blobs over 5 pages, sorted");

    // A wrong key: the service refuses; the error names the blob, not the key.
    let wrong_key = BASE64.encode([7u8; 64]);
    let mut config = azurite.account_key_config();
    config.auth = AzureAuthConfig::AccountKey {
        key: SecretString::literal(wrong_key.clone()),
    };
    let bad = store_for(config);
    let err = bad.get(&c, "p/000").await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BlobError::Other { .. }), "{err:?}");
    assert!(text.contains(&c) && text.contains("p/000"), "{text}");
    assert!(text.contains("403"), "{text}");
    assert!(
        !text.contains(&wrong_key) && !text.contains(ACCOUNT_KEY),
        "{text}"
    );
    assert!(!format!("{bad:?}").contains(&wrong_key));

    // A SAS without write permission: refused, and the signature is not shown.
    let read_only = account_sas(ACCOUNT, ACCOUNT_KEY).replace("sp=rwdlac", "sp=rl");
    let config = AzureBlobConfig::new(
        azurite.account_url.clone(),
        AzureAuthConfig::Sas {
            sas: SecretString::literal(read_only.clone()),
        },
    );
    let reader = store_for(config);
    let err = reader
        .put(&c, "p/x", Bytes::from_static(b"x"), PutCondition::None)
        .await
        .unwrap_err();
    let sig = read_only.split("sig=").nth(1).unwrap();
    assert!(!err.to_string().contains(sig), "{err}");
    assert!(!format!("{err:?}").contains(sig));
    assert!(!reader.describe().contains(sig));

    // Nothing listens here any more: a transient error after the retries.
    let port = azurite.port;
    drop(azurite);
    let mut config = AzureBlobConfig::new(
        format!("http://127.0.0.1:{port}/{ACCOUNT}"),
        AzureAuthConfig::AccountKey {
            key: SecretString::literal(ACCOUNT_KEY),
        },
    );
    config.max_retries = 1;
    config.retry_initial_ms = 10;
    config.retry_max_ms = 20;
    let gone = store_for(config);
    match gone.get(&c, "p/000").await {
        Err(e @ BlobError::Transient { .. }) => assert!(e.is_transient()),
        other => panic!("request to a stopped azurite: expected Transient, got {other:?}"),
    }
}
