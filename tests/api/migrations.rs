//! Migrations: one history per schema, safe to run concurrently, printable for review.

use tessera_core::{Module, migrate, roles};

use crate::support::{cluster, connect, modules};

async fn empty_database() -> String {
    let name = format!("m_{}", uuid::Uuid::new_v4().simple());
    let admin = connect(&cluster().superuser, "postgres").await;
    admin.batch_execute(&format!("create database {name} owner tessera_owner")).await.expect("create");
    let admin = connect(&cluster().superuser, &name).await;
    admin.batch_execute(&roles::database_script()).await.expect("grants");
    name
}

#[tokio::test]
async fn concurrent_migration_runs_apply_each_migration_once() {
    let db = empty_database().await;
    let modules = modules();
    let before = {
        let client = connect("tessera_owner", &db).await;
        let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
        migrate::pending_sql(&client, &refs).await.expect("pending")
    };
    assert!(before.contains("-- core: V1__tenancy") && before.contains("-- crm: V1__crm"), "{before}");

    let runs = (0..4).map(|_| {
        let db = db.clone();
        let modules = modules.clone();
        tokio::spawn(async move {
            let mut client = connect("tessera_owner", &db).await;
            let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
            migrate::run(&mut client, &refs).await.map(|applied| applied.len())
        })
    });
    let mut applied_total = 0;
    for run in runs {
        applied_total += run.await.expect("join").expect("every run succeeds");
    }
    let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
    let planned: usize = migrate::plan(&refs).iter().map(|step| step.len()).sum();
    assert!(planned >= 10, "core, events and three modules: {planned}");
    assert_eq!(applied_total, planned, "every migration applied by exactly one run");

    let client = connect("tessera_owner", &db).await;
    for (schema, versions) in [("core", 15), ("events", 8), ("crm", 4), ("invoicing", 6), ("hr", 3)] {
        let n: i64 = client
            .query_one(&format!("select count(*) from migrations.{schema}_history"), &[])
            .await
            .expect("history")
            .get(0);
        assert_eq!(n, versions, "{schema} has its own history");
    }
    let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
    assert_eq!(migrate::pending_sql(&client, &refs).await.expect("pending"), "");
    drop(client);
    let admin = connect(&cluster().superuser, "postgres").await;
    admin.batch_execute(&format!("drop database {db} with (force)")).await.expect("drop");
}

#[tokio::test]
async fn migrating_without_the_roles_says_what_to_do() {
    let modules = modules();
    let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
    let db = empty_database().await;
    let admin = connect(&cluster().superuser, &db).await;
    // A role named in the plan that this cluster does not have.
    struct Ghost;
    impl Module for Ghost {
        fn name(&self) -> &'static str {
            "ghost"
        }
        fn migrations(&self) -> refinery::Runner {
            refinery::Runner::new(&[])
        }
        fn routes(&self, _: tessera_core::db::ModuleDb) -> tessera_core::openapi::ApiRouter {
            tessera_core::openapi::ApiRouter::new()
        }
    }
    let mut with_ghost = refs.clone();
    with_ghost.push(&Ghost);
    let mut owner = connect("tessera_owner", &db).await;
    let err = migrate::run(&mut owner, &with_ghost).await.expect_err("missing role");
    assert!(err.to_string().contains("tessera_ghost") && err.to_string().contains("roles --print"), "{err}");
    drop(owner);
    drop(admin);
    let admin = connect(&cluster().superuser, "postgres").await;
    admin.batch_execute(&format!("drop database {db} with (force)")).await.expect("drop");
}
