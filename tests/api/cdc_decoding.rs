//! The pgoutput decoder against what a real PostgreSQL sends: rows written through the REST API, read back
//! from a logical replication slot with `pg_logical_slot_get_binary_changes`, decoded and converted.

use serde_json::json;
use tessera_cdc::pgoutput::{self, Datum, Message, OldTuple, Relation};
use tessera_cdc::value::text_to_json;

use crate::support::{TestApp, cluster, connect};

fn row(relation: &Relation, datums: &[Datum]) -> serde_json::Map<String, serde_json::Value> {
    relation
        .columns
        .iter()
        .zip(datums)
        .map(|(c, d)| {
            let v = match d {
                Datum::Null => serde_json::Value::Null,
                Datum::Text(t) => text_to_json(c.type_oid, std::str::from_utf8(t).expect("utf-8")),
                other => panic!("unexpected datum {other:?}"),
            };
            (c.name.clone(), v)
        })
        .collect()
}

#[tokio::test]
async fn committed_rows_decode_from_a_real_slot() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let slot = format!("test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    admin
        .query_one("select pg_create_logical_replication_slot($1, 'pgoutput')", &[&slot])
        .await
        .expect("slot");

    let company = app.create("companies", &key, json!({"name": "Globex"})).await;
    let deal = app
        .create("deals", &key, json!({"title": "Hammocks", "company_id": company, "amount": "87500.50"}))
        .await;
    let patched = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "won"})).await;
    assert_eq!(patched.status, 200);

    // Test clusters commit asynchronously and decoding reads only flushed WAL: wait, with a deadline, until
    // the three transactions are there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let messages: Vec<Message> = loop {
        let rows = admin
            .query(
                "select data from pg_logical_slot_peek_binary_changes($1, null, null,
                     'proto_version', '1', 'publication_names', 'tessera_cdc')",
                &[&slot],
            )
            .await
            .expect("changes");
        let messages: Vec<Message> = rows
            .iter()
            .map(|r| pgoutput::decode(r.get::<_, &[u8]>(0)).expect("every real message decodes"))
            .collect();
        if messages.iter().filter(|m| matches!(m, Message::Commit { .. })).count() >= 3 {
            break messages;
        }
        assert!(std::time::Instant::now() < deadline, "the changes never arrived: {messages:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    admin.query_one("select pg_drop_replication_slot($1)", &[&slot]).await.expect("drop slot");

    let mut relations = std::collections::HashMap::new();
    let mut seen = Vec::new();
    for m in &messages {
        match m {
            Message::Relation(r) => {
                relations.insert(r.id, r.clone());
            }
            Message::Insert { relation_id, new } => {
                let r = &relations[relation_id];
                seen.push((format!("{}.{}.insert", r.namespace, r.name), None, row(r, &new.0)));
            }
            Message::Update { relation_id, old, new } => {
                let r = &relations[relation_id];
                assert!(r.has_full_identity(), "crm.deals has REPLICA IDENTITY FULL");
                let old = match old {
                    Some(OldTuple::Full(t)) => row(r, &t.0),
                    other => panic!("expected the full old row, got {other:?}"),
                };
                seen.push((format!("{}.{}.update", r.namespace, r.name), Some(old), row(r, &new.0)));
            }
            _ => {}
        }
    }
    let begins = messages.iter().filter(|m| matches!(m, Message::Begin { .. })).count();
    let commits = messages.iter().filter(|m| matches!(m, Message::Commit { .. })).count();
    assert_eq!((begins, commits), (3, 3), "one transaction per request");

    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].0, "crm.companies.insert");
    assert_eq!(seen[0].2["name"], "Globex");
    assert_eq!(seen[0].2["tenant_id"], tenant.to_string().as_str());
    assert_eq!(seen[1].0, "crm.deals.insert");
    assert_eq!(seen[1].2["amount"], "87500.50", "numeric keeps its digits");
    assert_eq!(seen[1].2["stage"], "lead");
    assert_eq!(seen[2].0, "crm.deals.update");
    let old = seen[2].1.as_ref().expect("old row");
    assert_eq!((old["stage"].as_str(), seen[2].2["stage"].as_str()), (Some("lead"), Some("won")));
    assert_eq!(seen[2].2["id"], deal.as_str());
}
