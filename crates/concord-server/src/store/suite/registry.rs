//! The [`ClientRegistry`] contracts: a client id is bound once, to the first user that claims
//! it, even when claims race.

use super::*;

/// `claim_client`: the first claim wins; another client id is another binding.
pub async fn client_claims(reg: Arc<dyn ClientRegistry>) {
    assert_eq!(
        reg.claim_client(&client("c-1"), "alice").await.unwrap(),
        "alice"
    );
    assert_eq!(
        reg.claim_client(&client("c-1"), "mallory").await.unwrap(),
        "alice",
        "first claim wins"
    );
    assert_eq!(
        reg.claim_client(&client("c-2"), "mallory").await.unwrap(),
        "mallory"
    );
}

/// Racing first claims of one client id (needs a multi-thread runtime): every claimant is
/// answered with the same user, one of theirs, and later claims get it too.
pub async fn racing_claims_bind_once(reg: Arc<dyn ClientRegistry>) {
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (reg, start) = (reg.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                reg.claim_client(&client("racy"), &format!("user-{i}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut bound = Vec::new();
    for t in tasks {
        bound.push(t.await.unwrap());
    }
    assert!(bound.iter().all(|u| *u == bound[0]), "{bound:?}");
    assert!(bound[0].starts_with("user-"), "{bound:?}");
    assert_eq!(
        reg.claim_client(&client("racy"), "late").await.unwrap(),
        bound[0]
    );
}

/// `registry_suite!(name, make)`: a module `name` with one `#[test]` per [`ClientRegistry`]
/// contract; `make` yields `(Arc<dyn ClientRegistry>, guard)`.
#[macro_export]
macro_rules! registry_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;
            $crate::registry_suite!(@contracts $make;
                client_claims 1,
                racing_claims_bind_once 2
            );
        }
    };
    (@contracts $make:expr; $($contract:ident $threads:literal),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                $crate::store::suite::run($threads, async {
                    let (registry, _guard) = $make;
                    $crate::store::suite::registry::$contract(registry).await;
                });
            }
        )*
    };
}
