//! Broker accounts of gateway API keys: a key with the scope `readings:publish` is its
//! gateway's MQTT login, and the server keeps one account per such key in Mosquitto's
//! dynamic-security plugin. This module is the pure part: names, the plugin's commands and
//! answers, and what a reconciliation must change. [`crate::broker_admin`] sends the commands.
//!
//! # Accounts
//! - User name: the key without its secret, `mpak.<tenant>.<key id>` ([`username`]); password:
//!   the whole key. The broker keeps only its own salted hash of the password. The account is
//!   bound to the client id equal to its user name, so that a key can never take over another
//!   client's connection or session (ingest's, another organisation's gateway).
//! - Role: one per organisation, `maintainpro-gateways-<tenant>` ([`role`]), allowed to publish
//!   on `maintainpro/v1/<tenant>/+/readings` and nothing else: the plugin's default refuses
//!   every other publish and every subscription. A key of one organisation therefore cannot
//!   publish another's readings.
//!
//! # Life cycle
//! - Created when the key is created or rotated, before the key's row is committed: a key that
//!   exists is a key the broker knows (else the request fails and nothing is kept).
//! - Removed when the key is revoked, when a rotation's overlap ends or the key expires (by the
//!   reconciler, within its interval), and when no key row stands behind it (an account whose
//!   creation was rolled back): only once it has been seen without a row for longer than a
//!   grace period (the exchange timeout and two reconcile intervals), so that a key whose row
//!   is still being committed is never touched.
//! - The server cannot re-create a lost account (it never keeps the key); a live key without
//!   an account in two passes in a row is reported ([`Plan::missing`]) and fixed by rotating
//!   the key.
//!
//! Accounts whose names are not key names (the plugin's admin, ingest's account) are never
//! touched, nor are key accounts of organisations this database does not hold (another
//! deployment on the same broker).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use model::TenantId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The topic the plugin takes commands on.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// The topic the plugin answers on (every admin client subscribed hears every answer).
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

/// The plugin's answer when the role exists already: harmless, the role is shared.
const ROLE_EXISTS: &str = "Role already exists";
/// The plugin's answer when the role has the ACL already.
const ACL_EXISTS: &str = "ACL with this topic already exists";
/// The plugin's answer to removing an account that is gone already.
const CLIENT_NOT_FOUND: &str = "Client not found";

pub use model::gateway_key::{parse_username, username};

/// The role every gateway account of `tenant` holds.
pub fn role(tenant: Uuid) -> String {
    format!("maintainpro-gateways-{}", tenant.simple())
}

/// One ACL of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acl {
    pub acltype: &'static str,
    pub topic: String,
    pub allow: bool,
}

/// An account's password (a whole API key): serialized as it is, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A role an account holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleRef {
    pub rolename: String,
}

/// A command of the dynamic-security plugin, with the correlation the answer echoes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command")]
pub enum Command {
    #[serde(rename = "createRole")]
    CreateRole {
        rolename: String,
        textname: String,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
    #[serde(rename = "addRoleACL")]
    AddRoleAcl {
        rolename: String,
        #[serde(flatten)]
        acl: Acl,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
    #[serde(rename = "createClient")]
    CreateClient {
        username: String,
        password: Password,
        /// The only client id the account may connect with.
        clientid: String,
        textname: String,
        roles: Vec<RoleRef>,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
    #[serde(rename = "deleteClient")]
    DeleteClient {
        username: String,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
    #[serde(rename = "listClients")]
    ListClients {
        verbose: bool,
        /// -1: every account.
        count: i64,
        offset: i64,
        #[serde(rename = "correlationData")]
        correlation: String,
    },
}

impl Command {
    pub fn correlation(&self) -> &str {
        match self {
            Command::CreateRole { correlation, .. }
            | Command::AddRoleAcl { correlation, .. }
            | Command::CreateClient { correlation, .. }
            | Command::DeleteClient { correlation, .. }
            | Command::ListClients { correlation, .. } => correlation,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Command::CreateRole { .. } => "createRole",
            Command::AddRoleAcl { .. } => "addRoleACL",
            Command::CreateClient { .. } => "createClient",
            Command::DeleteClient { .. } => "deleteClient",
            Command::ListClients { .. } => "listClients",
        }
    }

    /// Whether `error` in the answer to this command leaves the broker as wanted.
    fn tolerates(&self, error: &str) -> bool {
        match self {
            Command::CreateRole { .. } => error == ROLE_EXISTS,
            Command::AddRoleAcl { .. } => error == ACL_EXISTS,
            Command::DeleteClient { .. } => error == CLIENT_NOT_FOUND,
            Command::CreateClient { .. } | Command::ListClients { .. } => false,
        }
    }
}

/// What is published on [`CONTROL_TOPIC`].
#[derive(Debug, Serialize)]
pub struct Request<'a> {
    pub commands: &'a [Command],
}

/// What the plugin publishes on [`RESPONSE_TOPIC`].
#[derive(Debug, Deserialize)]
pub struct Responses {
    #[serde(default)]
    pub responses: Vec<Answer>,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Answer {
    pub command: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    #[serde(default, rename = "correlationData")]
    pub correlation: Option<String>,
}

/// A command the broker refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the broker refused {command}: {error}")]
pub struct Refusal {
    pub command: &'static str,
    pub error: String,
}

/// Checks each answer against its command: the first command without an answer, or with a
/// refusal that is not harmless.
pub fn check(commands: &[Command], answers: &[Answer]) -> Result<(), Refusal> {
    for command in commands {
        let answer = answers
            .iter()
            .find(|a| a.correlation.as_deref() == Some(command.correlation()));
        let error = match answer {
            None => "no answer",
            Some(Answer { error: None, .. }) => continue,
            Some(Answer {
                error: Some(error), ..
            }) if command.tolerates(error) => continue,
            Some(Answer {
                error: Some(error), ..
            }) => error,
        };
        return Err(Refusal {
            command: command.name(),
            error: error.to_owned(),
        });
    }
    Ok(())
}

/// The commands that give key `key` of `tenant` (whose whole text is `password`) its
/// account: the organisation's role (made once, its ACL restored if lost), then the account.
pub fn provision(
    tenant: Uuid,
    key: Uuid,
    key_name: &str,
    password: &str,
    correlation: &mut impl FnMut() -> String,
) -> Vec<Command> {
    let rolename = role(tenant);
    vec![
        Command::CreateRole {
            rolename: rolename.clone(),
            textname: format!("MaintAInPro gateways of organisation {tenant}"),
            correlation: correlation(),
        },
        Command::AddRoleAcl {
            rolename: rolename.clone(),
            acl: Acl {
                acltype: "publishClientSend",
                topic: model::topic::tenant_readings_filter(TenantId::from_uuid(tenant)),
                allow: true,
            },
            correlation: correlation(),
        },
        Command::CreateClient {
            username: username(tenant, key),
            password: Password(password.to_owned()),
            clientid: username(tenant, key),
            textname: format!("MaintAInPro API key {key_name:?}"),
            roles: vec![RoleRef { rolename }],
            correlation: correlation(),
        },
    ]
}

/// The user names in the answer to [`Command::ListClients`], and the total the plugin holds.
pub fn listed_clients(answer: &Answer) -> Result<(Vec<String>, usize), Refusal> {
    if let Some(error) = &answer.error {
        return Err(Refusal {
            command: "listClients",
            error: error.clone(),
        });
    }
    let data = answer.data.as_ref();
    let clients = data
        .and_then(|d| d.get("clients"))
        .and_then(|c| c.as_array())
        .map(|clients| {
            clients
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .ok_or_else(|| Refusal {
            command: "listClients",
            error: "the answer lists no clients".to_owned(),
        })?;
    let total = data
        .and_then(|d| d.get("totalCount"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(clients.len());
    Ok((clients, total))
}

/// What the database says of a key that may have an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Neither revoked nor expired, with the scope `readings:publish`: its account stays.
    Live,
    /// Revoked, expired, or without the scope: its account goes.
    Dead,
}

/// What one reconciliation changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Accounts to remove now.
    pub remove: Vec<String>,
    /// Live keys whose account was missing in this pass and the one before, as (tenant, key).
    pub missing: Vec<(Uuid, Uuid)>,
}

/// What a reconciliation remembers for the next one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Memory {
    /// Accounts without a key row, with when they were first seen so.
    pub unknown: HashMap<String, Instant>,
    /// Live keys without an account in the last pass.
    pub missing: HashSet<(Uuid, Uuid)>,
}

/// What one pass read: the broker's `accounts` (listed first), then the database's `keys`
/// (every key that holds or held `readings:publish`) and `tenants`.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    pub accounts: &'a [String],
    pub keys: &'a HashMap<(Uuid, Uuid), KeyState>,
    pub tenants: &'a HashSet<Uuid>,
}

/// Compares one pass with what the previous ones remembered, at `now`. An account without a
/// key row goes once it has been seen so for longer than `grace`; accounts of tenants this
/// database does not hold are left alone.
pub fn plan(pass: Pass<'_>, before: &Memory, now: Instant, grace: Duration) -> (Plan, Memory) {
    let mut plan = Plan::default();
    let mut memory = Memory::default();
    let mut present = HashSet::new();
    for account in pass.accounts {
        let Some(id) = parse_username(account) else {
            continue;
        };
        if !pass.tenants.contains(&id.0) {
            continue;
        }
        present.insert(id);
        match pass.keys.get(&id) {
            Some(KeyState::Live) => {}
            Some(KeyState::Dead) => plan.remove.push(account.clone()),
            None => {
                let since = before.unknown.get(account).copied().unwrap_or(now);
                if now.saturating_duration_since(since) > grace {
                    plan.remove.push(account.clone());
                } else {
                    memory.unknown.insert(account.clone(), since);
                }
            }
        }
    }
    memory.missing = pass
        .keys
        .iter()
        .filter(|(id, state)| **state == KeyState::Live && !present.contains(*id))
        .map(|(id, _)| *id)
        .collect();
    let mut missing: Vec<(Uuid, Uuid)> = memory
        .missing
        .iter()
        .filter(|id| before.missing.contains(*id))
        .copied()
        .collect();
    missing.sort();
    plan.missing = missing;
    (plan, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("c{n}")
        }
    }

    #[test]
    fn user_names_are_keys_without_their_secret() {
        let (tenant, key) = (Uuid::new_v4(), Uuid::new_v4());
        let name = username(tenant, key);
        assert_eq!(parse_username(&name), Some((tenant, key)));
        let hasher =
            crate::api_keys::ApiKeyHasher::new(&model::settings::Secret::new("p".repeat(32)));
        let (text, _) = hasher.new_key(tenant, key);
        assert!(text.starts_with(&format!("{name}.")), "{text} {name}");
        assert_eq!(
            model::gateway_key::broker_login(&text),
            Some((TenantId::from_uuid(tenant), name.as_str()))
        );
        for other in [
            "admin",
            "maintainpro-ingest",
            "mpak",
            "mpak.",
            &format!("{name}.secret"),
            &name.to_uppercase(),
            &format!("mprs.{}.{}", tenant.simple(), key.simple()),
        ] {
            assert_eq!(parse_username(other), None, "{other}");
        }
    }

    #[test]
    fn commands_are_written_as_the_plugin_reads_them() {
        let tenant = Uuid::parse_str("6f1c2a0e-0a4e-4f43-9b40-3d8d4f7c9a11").expect("uuid");
        let key = Uuid::parse_str("0b7e9d6c-52a1-4c3e-8f2d-9a6b5c4d3e2f").expect("uuid");
        let commands = provision(tenant, key, "north hall", "mpak.x.y.z", &mut counter());
        let json = serde_json::to_value(Request {
            commands: &commands,
        })
        .expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"commands": [
                {"command": "createRole", "rolename": "maintainpro-gateways-6f1c2a0e0a4e4f439b403d8d4f7c9a11",
                 "textname": "MaintAInPro gateways of organisation 6f1c2a0e-0a4e-4f43-9b40-3d8d4f7c9a11",
                 "correlationData": "c1"},
                {"command": "addRoleACL", "rolename": "maintainpro-gateways-6f1c2a0e0a4e4f439b403d8d4f7c9a11",
                 "acltype": "publishClientSend",
                 "topic": "maintainpro/v1/6f1c2a0e-0a4e-4f43-9b40-3d8d4f7c9a11/+/readings",
                 "allow": true, "correlationData": "c2"},
                {"command": "createClient",
                 "username": "mpak.6f1c2a0e0a4e4f439b403d8d4f7c9a11.0b7e9d6c52a14c3e8f2d9a6b5c4d3e2f",
                 "password": "mpak.x.y.z",
                 "clientid": "mpak.6f1c2a0e0a4e4f439b403d8d4f7c9a11.0b7e9d6c52a14c3e8f2d9a6b5c4d3e2f",
                 "textname": "MaintAInPro API key \"north hall\"",
                 "roles": [{"rolename": "maintainpro-gateways-6f1c2a0e0a4e4f439b403d8d4f7c9a11"}],
                 "correlationData": "c3"},
            ]})
        );
        assert!(
            !format!("{commands:?}").contains("mpak.x.y.z"),
            "the password never shows in Debug output"
        );
    }

    fn answer(command: &str, error: Option<&str>, correlation: &str) -> Answer {
        Answer {
            command: command.to_owned(),
            error: error.map(str::to_owned),
            data: None,
            correlation: Some(correlation.to_owned()),
        }
    }

    #[test]
    fn harmless_refusals_pass_and_others_do_not() {
        let commands = provision(Uuid::new_v4(), Uuid::new_v4(), "k", "p", &mut counter());
        let ok = [
            answer("createRole", Some(ROLE_EXISTS), "c1"),
            answer("addRoleACL", Some(ACL_EXISTS), "c2"),
            answer("createClient", None, "c3"),
        ];
        assert_eq!(check(&commands, &ok), Ok(()));
        let mut taken = ok.clone();
        taken[2].error = Some("Client already exists".to_owned());
        assert_eq!(
            check(&commands, &taken),
            Err(Refusal {
                command: "createClient",
                error: "Client already exists".to_owned()
            })
        );
        let mut denied = ok.clone();
        denied[0].error = Some("Not authorized".to_owned());
        assert!(check(&commands, &denied).is_err());
        assert_eq!(
            check(&commands, &ok[..2]),
            Err(Refusal {
                command: "createClient",
                error: "no answer".to_owned()
            }),
            "a command without an answer"
        );
        let delete = [Command::DeleteClient {
            username: "u".to_owned(),
            correlation: "d".to_owned(),
        }];
        assert_eq!(
            check(
                &delete,
                &[answer("deleteClient", Some(CLIENT_NOT_FOUND), "d")]
            ),
            Ok(())
        );
    }

    #[test]
    fn listed_clients_are_read_from_the_answer() {
        let list = Answer {
            command: "listClients".to_owned(),
            error: None,
            data: Some(serde_json::json!({"totalCount": 2, "clients": ["admin", "mpak.a.b"]})),
            correlation: Some("l".to_owned()),
        };
        assert_eq!(
            listed_clients(&list),
            Ok((vec!["admin".to_owned(), "mpak.a.b".to_owned()], 2))
        );
        let refused = answer("listClients", Some("Not authorized"), "l");
        assert!(listed_clients(&refused).is_err());
        let parsed: Responses = serde_json::from_str(
            r#"{"responses":[{"command":"deleteClient","error":"Client not found"}]}"#,
        )
        .expect("parses");
        assert_eq!(parsed.responses[0].error.as_deref(), Some(CLIENT_NOT_FOUND));
    }

    #[test]
    fn the_plan_removes_dead_and_long_unknown_accounts_and_reports_lasting_missing_ones() {
        let (tenant, elsewhere) = (Uuid::new_v4(), Uuid::new_v4());
        let [live, dead, unknown, lost] = [(); 4].map(|()| Uuid::new_v4());
        let accounts: Vec<String> = ["admin".to_owned(), "maintainpro-ingest".to_owned()]
            .into_iter()
            .chain([live, dead, unknown].map(|k| username(tenant, k)))
            .chain([username(elsewhere, Uuid::new_v4())])
            .collect();
        let keys = HashMap::from([
            ((tenant, live), KeyState::Live),
            ((tenant, dead), KeyState::Dead),
            ((tenant, lost), KeyState::Live),
        ]);
        let tenants = HashSet::from([tenant]);
        let pass = Pass {
            accounts: &accounts,
            keys: &keys,
            tenants: &tenants,
        };
        let grace = Duration::from_secs(65);
        let t0 = Instant::now();
        let (first, memory) = plan(pass, &Memory::default(), t0, grace);
        assert_eq!(first.remove, vec![username(tenant, dead)]);
        assert!(first.missing.is_empty(), "missing once is not yet missing");
        assert_eq!(
            memory.unknown,
            HashMap::from([(username(tenant, unknown), t0)])
        );
        // Within the grace the unknown account stays; after it, it goes. The account of an
        // organisation this database does not hold is never touched.
        let (second, memory) = plan(pass, &memory, t0 + Duration::from_secs(60), grace);
        assert_eq!(second.remove, vec![username(tenant, dead)]);
        assert_eq!(second.missing, vec![(tenant, lost)]);
        let (third, memory) = plan(pass, &memory, t0 + Duration::from_secs(66), grace);
        assert_eq!(
            third.remove,
            vec![username(tenant, dead), username(tenant, unknown)]
        );
        assert!(memory.unknown.is_empty());
        // A key committed meanwhile is no longer unknown, and its account stays.
        let mut committed = keys.clone();
        committed.insert((tenant, unknown), KeyState::Live);
        let (fourth, _) = plan(
            Pass {
                keys: &committed,
                ..pass
            },
            &Memory {
                unknown: HashMap::from([(username(tenant, unknown), t0)]),
                ..Memory::default()
            },
            t0 + Duration::from_secs(600),
            grace,
        );
        assert_eq!(fourth.remove, vec![username(tenant, dead)]);
    }
}
