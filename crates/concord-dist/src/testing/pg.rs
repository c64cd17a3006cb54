//! A fresh PostgreSQL database per test: `CREATE DATABASE concord_test_<random>` on the
//! machine's server (`CONCORD_TEST_POSTGRES_URL`, default
//! postgres://postgres@127.0.0.1:5432/test), dropped `WITH (FORCE)` when the guard drops.

use rand::Rng;
use sqlx::{Connection, PgConnection};

/// The server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("CONCORD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A database that exists as long as this value (dropped on drop, connections or not).
pub struct TestDb {
    name: String,
    url: String,
    admin: String,
}

impl TestDb {
    /// Creates an empty database (no schema: call `migrate`).
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let name = format!("concord_test_{:016x}", rand::rng().random::<u64>());
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("test PostgreSQL at {admin} is not reachable: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        let url = match admin.rfind('/') {
            Some(i) => format!("{}/{name}", &admin[..i]),
            None => panic!("{admin} names no database"),
        };
        TestDb { name, url, admin }
    }

    /// Creates a database with the schema applied.
    pub async fn migrated() -> TestDb {
        let db = TestDb::create().await;
        crate::pg::migrate(&db.url)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", db.name));
        db
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs outside any runtime (or inside one that is shutting down): a thread with
        // its own small runtime does the DROP.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()?;
                let _ = conn.close().await;
                Some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}
