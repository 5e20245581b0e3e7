//! What a user may do: the documented list of permissions, the permission sets of the
//! built-in roles, and custom roles' names. Pure.
//!
//! Every handler asks for one [`Permission`]; a user's role gives a [`Permissions`] set,
//! fixed for the built-in roles and chosen per organisation for custom ones. The work-order
//! state machine sees the caller through [`Permissions::standing`]. `docs/PERMISSIONS.md` is
//! [`matrix_markdown`]'s output; a test keeps the two equal.

use std::fmt;

use serde_json::Value;

use crate::work_order_flow::Role;

/// One thing a role may allow. The text form (`assets:write`) is what custom roles list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    AssetsRead,
    AssetsWrite,
    RegistryRead,
    RegistryWrite,
    ReadingsRead,
    AlarmsRead,
    AlarmsWrite,
    WorkOrdersRead,
    WorkOrdersCreate,
    WorkOrdersWork,
    WorkOrdersSupervise,
    TeamsRead,
    TeamsWrite,
    PmRead,
    PmWrite,
    PartsRead,
    PartsWrite,
    ReliabilityRead,
    RulesRead,
    EventsRead,
    WebhooksManage,
    ApiKeysManage,
    AuditRead,
    UsersRead,
    UsersManage,
    RolesManage,
    OrganisationManage,
}

impl Permission {
    /// Every permission, in the documented order.
    pub const ALL: [Permission; 27] = [
        Permission::AssetsRead,
        Permission::AssetsWrite,
        Permission::RegistryRead,
        Permission::RegistryWrite,
        Permission::ReadingsRead,
        Permission::AlarmsRead,
        Permission::AlarmsWrite,
        Permission::WorkOrdersRead,
        Permission::WorkOrdersCreate,
        Permission::WorkOrdersWork,
        Permission::WorkOrdersSupervise,
        Permission::TeamsRead,
        Permission::TeamsWrite,
        Permission::PmRead,
        Permission::PmWrite,
        Permission::PartsRead,
        Permission::PartsWrite,
        Permission::ReliabilityRead,
        Permission::RulesRead,
        Permission::EventsRead,
        Permission::WebhooksManage,
        Permission::ApiKeysManage,
        Permission::AuditRead,
        Permission::UsersRead,
        Permission::UsersManage,
        Permission::RolesManage,
        Permission::OrganisationManage,
    ];

    pub fn as_str(self) -> &'static str {
        self.describe().0
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// What the permission allows, in one line.
    pub fn description(self) -> &'static str {
        self.describe().1
    }

    fn describe(self) -> (&'static str, &'static str) {
        use Permission::*;
        match self {
            AssetsRead => (
                "assets:read",
                "See sites, areas, assets and their QR codes.",
            ),
            AssetsWrite => (
                "assets:write",
                "Create and change sites, areas and assets, and move assets in the hierarchy.",
            ),
            RegistryRead => (
                "registry:read",
                "See gateways, devices and tags; export the asset and tag registers.",
            ),
            RegistryWrite => (
                "registry:write",
                "Register and change gateways, devices and tags; import the registers; see the ingest policy and the dead letters.",
            ),
            ReadingsRead => ("readings:read", "Query a tag's or an asset's readings."),
            AlarmsRead => ("alarms:read", "See alarms and their history."),
            AlarmsWrite => ("alarms:write", "Acknowledge, shelve and unshelve alarms."),
            WorkOrdersRead => (
                "work_orders:read",
                "See every work order with its history. Without it, a holder of \
                 `work_orders:create` sees only the work orders they requested.",
            ),
            WorkOrdersCreate => (
                "work_orders:create",
                "Open work orders. Without `work_orders:read` they are requests: no due date, \
                 and the requester may edit or cancel them while they are open.",
            ),
            WorkOrdersWork => (
                "work_orders:work",
                "Be assigned work, and work the work orders assigned to them or their team: \
                 start, hold, complete, time logs, parts used, checklist, comments.",
            ),
            WorkOrdersSupervise => (
                "work_orders:supervise",
                "Every change to every work order: edit, assign, plan checklists and parts, \
                 verify, cancel, reopen.",
            ),
            TeamsRead => ("teams:read", "See teams and their members."),
            TeamsWrite => ("teams:write", "Create teams and set their members."),
            PmRead => (
                "pm:read",
                "See preventive-maintenance schedules and their occurrences.",
            ),
            PmWrite => (
                "pm:write",
                "Create and change preventive-maintenance schedules.",
            ),
            PartsRead => (
                "parts:read",
                "See parts, stock per location and stock locations.",
            ),
            PartsWrite => (
                "parts:write",
                "Create parts and stock locations, set stock levels, record movements.",
            ),
            ReliabilityRead => ("reliability:read", "See MTBF, MTTR and downtime reports."),
            RulesRead => ("rules:read", "See which rule files are in force."),
            EventsRead => ("events:read", "Follow the live event stream."),
            WebhooksManage => (
                "webhooks:manage",
                "Create, change and delete webhooks; see their deliveries.",
            ),
            ApiKeysManage => (
                "api_keys:manage",
                "Create, rotate, list and revoke API keys.",
            ),
            AuditRead => ("audit:read", "Query and export the audit log."),
            UsersRead => (
                "users:read",
                "See the organisation's users: name, email, role, whether disabled or with MFA.",
            ),
            UsersManage => (
                "users:manage",
                "Manage users: create them, rename, disable and enable them, change their \
                 role, end their sessions, reset their MFA, export or erase their data.",
            ),
            RolesManage => (
                "roles:manage",
                "Create, change and delete the organisation's custom roles.",
            ),
            OrganisationManage => (
                "organisation:manage",
                "Set the organisation's MFA, ingest and service-level policies.",
            ),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u32);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);

    /// `ALL` lists the permissions in declaration order, so a permission's discriminant is
    /// its place there (a test holds it).
    fn bit(p: Permission) -> u32 {
        1 << p as u32
    }

    pub fn of(list: &[Permission]) -> Permissions {
        Permissions(list.iter().fold(0, |acc, p| acc | Self::bit(*p)))
    }

    pub fn all() -> Permissions {
        Self::of(&Permission::ALL)
    }

    pub fn has(self, p: Permission) -> bool {
        self.0 & Self::bit(p) != 0
    }

    /// The permissions in the documented order.
    pub fn list(self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .collect()
    }

    /// The permissions of a built-in role, or `None` for another name.
    pub fn builtin(role: &str) -> Option<Permissions> {
        Role::parse(role).map(Self::of_role)
    }

    /// The permissions of a built-in role.
    pub fn of_role(role: Role) -> Permissions {
        use Permission::*;
        // What every role of the organisation's staff may see.
        const SEE: [Permission; 11] = [
            AssetsRead,
            RegistryRead,
            ReadingsRead,
            AlarmsRead,
            WorkOrdersRead,
            TeamsRead,
            PmRead,
            PartsRead,
            ReliabilityRead,
            RulesRead,
            EventsRead,
        ];
        match role {
            Role::Admin => Self::all(),
            Role::Manager => Self::of(&[
                UsersRead,
                AssetsWrite,
                RegistryWrite,
                AlarmsWrite,
                WorkOrdersCreate,
                WorkOrdersWork,
                WorkOrdersSupervise,
                TeamsWrite,
                PmWrite,
                PartsWrite,
            ])
            .union(Self::of(&SEE)),
            Role::Technician => {
                Self::of(&[AlarmsWrite, WorkOrdersCreate, WorkOrdersWork]).union(Self::of(&SEE))
            }
            // A requester sees the plant and follows the requests they made.
            Role::Requester => Self::of(&[
                AssetsRead,
                RegistryRead,
                ReadingsRead,
                AlarmsRead,
                TeamsRead,
                RulesRead,
                WorkOrdersCreate,
            ]),
            Role::Viewer => Self::of(&SEE),
        }
    }

    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// What of `wanted` this set does not have.
    pub fn lacking(self, wanted: Permissions) -> Permissions {
        Permissions(wanted.0 & !self.0)
    }

    /// Whether this set has every permission of `other`.
    pub fn covers(self, other: Permissions) -> bool {
        self.lacking(other) == Permissions::NONE
    }

    /// The permissions named by `names`, skipping names that are no permission; the flag
    /// says whether any was skipped. For stored lists, which may hold a name this version
    /// no longer knows: such a list allows less, never more.
    pub fn parse_known<S: AsRef<str>>(names: &[S]) -> (Permissions, bool) {
        names.iter().fold(
            (Permissions::NONE, false),
            |(set, skipped), name| match Permission::parse(name.as_ref()) {
                Some(p) => (set.union(Permissions::of(&[p])), skipped),
                None => (set, true),
            },
        )
    }

    /// How the work-order state machine sees a holder of these permissions: a supervisor
    /// (as a manager), a worker (as a technician), a requester, or a viewer.
    pub fn standing(self) -> Role {
        if self.has(Permission::WorkOrdersSupervise) {
            Role::Manager
        } else if self.has(Permission::WorkOrdersWork) {
            Role::Technician
        } else if self.has(Permission::WorkOrdersCreate) {
            // Opens work orders but works on none: follows the ones they requested, whether
            // or not they also see every other one.
            Role::Requester
        } else {
            Role::Viewer
        }
    }

    /// Whether work orders may be assigned to a holder.
    pub fn can_be_assigned(self) -> bool {
        self.has(Permission::WorkOrdersWork) || self.has(Permission::WorkOrdersSupervise)
    }

    /// Whether a holder sees every work order, not only the ones they requested.
    pub fn sees_all_work_orders(self) -> bool {
        self.has(Permission::WorkOrdersRead)
    }
}

/// Whether `name` may name a custom role: 2-40 lower-case letters, digits, `-` and `_`,
/// starting with a letter, and not a built-in role's name.
pub fn valid_custom_role_name(name: &str) -> bool {
    let mut chars = name.chars();
    (2..=40).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && Role::parse(name).is_none()
}

/// An operation's `x-permission` in the OpenAPI document: a permission's name, or one of
/// these two.
pub const ANY_USER: &str = "any";
/// The operation's answer depends on the caller's work-order standing and on how the caller
/// stands to the work order (see [`Permissions::standing`]).
pub const STANDING: &str = "standing";

/// The operations of the OpenAPI document `doc` by their `x-permission`, each as
/// "`METHOD /path`" (without the `/api/v1` prefix), in the document's order.
fn operations_by_permission(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(paths) = doc["paths"].as_object() else {
        return out;
    };
    for (path, ops) in paths {
        let Some(ops) = ops.as_object() else { continue };
        for (method, op) in ops {
            if let Some(permission) = op["x-permission"].as_str() {
                let short = path.strip_prefix("/api/v1").unwrap_or(path);
                out.push((
                    permission.to_owned(),
                    format!("`{} {short}`", method.to_uppercase()),
                ));
            }
        }
    }
    out
}

/// The permission matrix, as `docs/PERMISSIONS.md` holds it: the built-in roles' sets from
/// [`Permissions::of_role`], and each permission's endpoints from the `x-permission` of the
/// operations of the OpenAPI document `doc`.
pub fn matrix_markdown(doc: &Value) -> String {
    let operations = operations_by_permission(doc);
    let endpoints = |key: &str| -> String {
        let list: Vec<&str> = operations
            .iter()
            .filter(|(p, _)| p == key)
            .map(|(_, op)| op.as_str())
            .collect();
        if list.is_empty() {
            "by standing: see *Work orders* below".to_owned()
        } else {
            list.join(", ")
        }
    };
    let mut out = String::new();
    out.push_str(
        "# Permissions\n\n\
         Generated by `maintainpro permissions` from `api/src/permissions.rs` (the permissions \
         and the built-in roles) and from the `x-permission` of every operation in the \
         OpenAPI document (the endpoints); a test fails when this file and the code disagree. \
         Regenerate with\n\
         `cargo run -q -p server --bin maintainpro -- permissions > docs/PERMISSIONS.md`.\n\n\
         Every endpoint asks for one permission. A user's role gives the permissions: the five \
         built-in roles below, or a custom role of the organisation (`POST /api/v1/roles`) \
         listing any of them. A role change takes effect at the user's next request. API keys \
         do not have roles: they carry scopes (see `docs/SECURITY.md`).\n\n\
         ## Built-in roles\n\n",
    );
    out.push_str("| Permission |");
    for role in Role::ALL {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str("\n|---|");
    for _ in Role::ALL {
        out.push_str(":---:|");
    }
    out.push('\n');
    for p in Permission::ALL {
        out.push_str(&format!("| `{}` |", p.as_str()));
        for role in Role::ALL {
            let mark = if Permissions::of_role(role).has(p) {
                " yes |"
            } else {
                " |"
            };
            out.push_str(mark);
        }
        out.push('\n');
    }
    out.push_str(
        "\n## What each permission allows\n\n\
         A tenant's object of another tenant answers 404 before any permission question; the \
         caller then needs the permission of the endpoint.\n\n\
         | Permission | Allows | Endpoints (`/api/v1`) |\n|---|---|---|\n",
    );
    for p in Permission::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            p.as_str(),
            p.description(),
            endpoints(p.as_str())
        ));
    }
    out.push_str(&format!(
        "\n## Any signed-in user\n\n\
         Their own account and sessions, and what every user may read: {}. \
         (`GET /users/{{id}}/export` is also open to the user themselves.)\n",
        endpoints(ANY_USER)
    ));
    out.push_str(&format!(
        "\n## Work orders\n\n\
         Permissions say who may ask; the state machine (`docs/WORK-ORDERS.md`) then looks at \
         the caller's standing and at how the caller stands to the work order. The standing \
         comes from the permissions: `work_orders:supervise` makes a supervisor (as admin and \
         manager); otherwise `work_orders:work` a worker (as technician: on work orders \
         assigned to them or their team); otherwise `work_orders:create` a requester (on their \
         own requests while they are open); otherwise a viewer. A role without \
         `work_orders:read` sees only the work orders it requested. Decided this way: {}.\n",
        endpoints(STANDING)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_the_permissions_in_declaration_order() {
        for (i, p) in Permission::ALL.into_iter().enumerate() {
            assert_eq!(p as usize, i, "{p}");
        }
    }

    #[test]
    fn sets_cover_and_lack() {
        use Permission::*;
        let mine = Permissions::of(&[AssetsRead, PartsRead]);
        let wanted = Permissions::of(&[PartsRead, PartsWrite]);
        assert_eq!(mine.lacking(wanted), Permissions::of(&[PartsWrite]));
        assert!(!mine.covers(wanted));
        assert!(mine.covers(Permissions::of(&[PartsRead])));
        assert!(mine.covers(Permissions::NONE));
        assert_eq!(
            Permissions::parse_known(&["parts:read", "parts:shred"]),
            (Permissions::of(&[PartsRead]), true)
        );
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        let mut names: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Permission::ALL.len());
    }

    /// The built-in roles keep the access they had when each handler listed roles itself.
    #[test]
    fn builtin_roles_allow_what_they_always_did() {
        use Permission::*;
        let admin = Permissions::of_role(Role::Admin);
        assert_eq!(admin, Permissions::all());
        let who = |p: Permission| -> Vec<&str> {
            Role::ALL
                .into_iter()
                .filter(|r| Permissions::of_role(*r).has(p))
                .map(Role::as_str)
                .collect()
        };
        let everyone = vec!["admin", "manager", "technician", "requester", "viewer"];
        let staff = vec!["admin", "manager", "technician", "viewer"];
        let planners = vec!["admin", "manager"];
        for p in [
            AssetsRead,
            RegistryRead,
            ReadingsRead,
            AlarmsRead,
            TeamsRead,
            RulesRead,
        ] {
            assert_eq!(who(p), everyone, "{p}");
        }
        for p in [
            WorkOrdersRead,
            PmRead,
            PartsRead,
            ReliabilityRead,
            EventsRead,
        ] {
            assert_eq!(who(p), staff, "{p}");
        }
        for p in [
            AssetsWrite,
            RegistryWrite,
            TeamsWrite,
            PmWrite,
            PartsWrite,
            WorkOrdersSupervise,
        ] {
            assert_eq!(who(p), planners, "{p}");
        }
        assert_eq!(who(AlarmsWrite), vec!["admin", "manager", "technician"]);
        // Added with the users' endpoints: planners see whom they can assign.
        assert_eq!(who(UsersRead), planners);
        assert_eq!(who(WorkOrdersWork), vec!["admin", "manager", "technician"]);
        assert_eq!(
            who(WorkOrdersCreate),
            vec!["admin", "manager", "technician", "requester"]
        );
        for p in [
            WebhooksManage,
            ApiKeysManage,
            AuditRead,
            UsersManage,
            RolesManage,
            OrganisationManage,
        ] {
            assert_eq!(who(p), vec!["admin"], "{p}");
        }
    }

    #[test]
    fn standing_follows_the_work_order_permissions() {
        use Permission::*;
        for role in Role::ALL {
            let expected = if role == Role::Admin {
                Role::Manager
            } else {
                role
            };
            assert_eq!(Permissions::of_role(role).standing(), expected);
        }
        assert_eq!(
            Permissions::of(&[WorkOrdersSupervise]).standing(),
            Role::Manager
        );
        assert_eq!(
            Permissions::of(&[WorkOrdersRead, WorkOrdersWork]).standing(),
            Role::Technician
        );
        assert_eq!(
            Permissions::of(&[WorkOrdersRead, WorkOrdersCreate]).standing(),
            Role::Requester
        );
        assert_eq!(Permissions::of(&[WorkOrdersRead]).standing(), Role::Viewer);
        assert_eq!(Permissions::NONE.standing(), Role::Viewer);
        assert!(!Permissions::of_role(Role::Requester).sees_all_work_orders());
        assert!(Permissions::of(&[WorkOrdersWork]).can_be_assigned());
        assert!(!Permissions::of(&[WorkOrdersCreate, WorkOrdersRead]).can_be_assigned());
    }

    #[test]
    fn custom_role_names() {
        for good in ["storekeeper", "shift-lead", "qa_2"] {
            assert!(valid_custom_role_name(good), "{good}");
        }
        for bad in [
            "admin",
            "viewer",
            "x",
            "Shift",
            "1st",
            "a b",
            "",
            &"a".repeat(41),
        ] {
            assert!(!valid_custom_role_name(bad), "{bad}");
        }
    }

    /// Every operation that needs a signed-in caller names what it needs, and every
    /// permission but the work-order ones (decided by standing) guards an endpoint.
    #[test]
    fn every_operation_names_its_permission() {
        let doc = crate::openapi::document().unwrap();
        let mut missing = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let public = op["security"].as_array().is_some_and(Vec::is_empty);
                match op["x-permission"].as_str() {
                    None if public => {}
                    Some(_) if public => missing.push(format!("{method} {path}: public yet named")),
                    Some(p) if p == ANY_USER || p == STANDING || Permission::parse(p).is_some() => {
                    }
                    other => missing.push(format!("{method} {path}: {other:?}")),
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
        let named = operations_by_permission(&doc);
        for p in Permission::ALL {
            let standing = matches!(
                p,
                Permission::WorkOrdersRead
                    | Permission::WorkOrdersWork
                    | Permission::WorkOrdersSupervise
            );
            assert_eq!(named.iter().any(|(n, _)| n == p.as_str()), !standing, "{p}");
        }
    }

    /// `docs/PERMISSIONS.md` is generated from this module; regenerate it with
    /// `maintainpro permissions` when this test fails.
    #[test]
    fn the_permission_document_is_current() {
        let committed = include_str!("../../docs/PERMISSIONS.md");
        let doc = crate::openapi::document().unwrap();
        assert!(
            committed == matrix_markdown(&doc),
            "docs/PERMISSIONS.md is stale: run `cargo run -q -p server --bin maintainpro -- permissions > docs/PERMISSIONS.md`"
        );
    }
}
