//! The work-order state machine: which status changes exist, what each needs, and who may
//! make it. Pure: the routes load the work order and the caller, ask here, then write.
//!
//! ```text
//!            assign               start                complete             verify
//!   open ───────────▶ assigned ─────────▶ in_progress ──────────▶ completed ────────▶ verified
//!    │ ◀───────────     │                  │      ▲                  │
//!    │    unassign      │             hold │      │ resume           │ reopen
//!    │                  │                  ▼      │                  ▼
//!    │                  │                 on_hold ─┘              in_progress
//!    └──────────────────┴───────── cancel (from any open status) ──▶ cancelled
//! ```
//!
//! Assignment is not a status change a caller asks for: assigning an open work order makes it
//! `assigned`, removing the assignee of an `assigned` one makes it `open` again
//! ([`assignment`]). Every other change is asked for by its target status ([`transition`]).
//! `docs/WORK-ORDERS.md` carries the table [`markdown_table`] prints; a test keeps the two
//! equal.

use std::fmt;

/// A work order's status, as stored in `work_orders.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Open,
    Assigned,
    InProgress,
    OnHold,
    Completed,
    Verified,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Open,
        Status::Assigned,
        Status::InProgress,
        Status::OnHold,
        Status::Completed,
        Status::Verified,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Assigned => "assigned",
            Status::InProgress => "in_progress",
            Status::OnHold => "on_hold",
            Status::Completed => "completed",
            Status::Verified => "verified",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Closed work orders carry `closed_at` and no longer block a new one of their asset and
    /// failure mode.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Verified | Status::Cancelled
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The built-in roles (`users.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Manager,
    Technician,
    Requester,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Manager,
        Role::Technician,
        Role::Requester,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Technician => "technician",
            Role::Requester => "requester",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == s)
    }

    /// Admins and managers plan and supervise: they may make every change.
    pub fn supervises(self) -> bool {
        matches!(self, Role::Admin | Role::Manager)
    }
}

/// The caller as the state machine sees it: a role, and how the caller stands to this work
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub role: Role,
    /// The work order is assigned to the caller, or to a team the caller is a member of.
    pub is_assignee: bool,
    /// The caller created the work order (a request).
    pub is_requester: bool,
}

impl Actor {
    /// Supervisors, and technicians on work orders assigned to them.
    fn works_on(self) -> bool {
        self.role.supervises() || (self.role == Role::Technician && self.is_assignee)
    }
}

/// Who may make a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Admins and managers.
    Supervisors,
    /// Admins and managers, and technicians the work order is assigned to (directly or
    /// through a team).
    Workers,
    /// Admins and managers, and the requester who created it while it is still open.
    SupervisorsOrRequester,
}

impl Who {
    fn allows(self, actor: Actor, from: Status) -> bool {
        match self {
            Who::Supervisors => actor.role.supervises(),
            Who::Workers => actor.works_on(),
            Who::SupervisorsOrRequester => {
                actor.role.supervises()
                    || (actor.is_requester && from == Status::Open && actor.role != Role::Viewer)
            }
        }
    }

    /// Who, in words: supervisors hold `work_orders:supervise` (admin, manager), workers
    /// `work_orders:work` (technician).
    pub fn describe(self) -> &'static str {
        match self {
            Who::Supervisors => "supervisors (admin, manager)",
            Who::Workers => "supervisors (admin, manager), workers (technician) assigned to it",
            Who::SupervisorsOrRequester => {
                "supervisors (admin, manager), its requester while it is open"
            }
        }
    }
}

/// What a change needs besides permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// A `resolution` saying how the work ended.
    Resolution,
    /// A `comment` saying why.
    Reason,
    /// An assignee on the work order.
    Assignee,
}

/// One allowed status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    /// What the change is called in the history (`work_order_events.kind` is
    /// `status_changed` with this as `action`).
    pub action: &'static str,
    pub who: Who,
    pub needs: Needs,
}

const fn t(from: Status, to: Status, action: &'static str, who: Who, needs: Needs) -> Transition {
    Transition {
        from,
        to,
        action,
        who,
        needs,
    }
}

use Needs as N;
use Status as S;

/// Every status change a caller may ask for. Anything not listed is refused.
pub const TRANSITIONS: &[Transition] = &[
    t(
        S::Assigned,
        S::InProgress,
        "start",
        Who::Workers,
        N::Assignee,
    ),
    t(
        S::Open,
        S::InProgress,
        "start",
        Who::Supervisors,
        N::Nothing,
    ),
    t(S::InProgress, S::OnHold, "hold", Who::Workers, N::Reason),
    t(S::OnHold, S::InProgress, "resume", Who::Workers, N::Nothing),
    t(
        S::InProgress,
        S::Completed,
        "complete",
        Who::Workers,
        N::Resolution,
    ),
    t(
        S::Completed,
        S::Verified,
        "verify",
        Who::Supervisors,
        N::Nothing,
    ),
    t(
        S::Completed,
        S::InProgress,
        "reopen",
        Who::Supervisors,
        N::Reason,
    ),
    t(
        S::Open,
        S::Cancelled,
        "cancel",
        Who::SupervisorsOrRequester,
        N::Reason,
    ),
    t(
        S::Assigned,
        S::Cancelled,
        "cancel",
        Who::Supervisors,
        N::Reason,
    ),
    t(
        S::InProgress,
        S::Cancelled,
        "cancel",
        Who::Supervisors,
        N::Reason,
    ),
    t(
        S::OnHold,
        S::Cancelled,
        "cancel",
        Who::Supervisors,
        N::Reason,
    ),
];

/// How a completed work order ended, as a person records it. `cleared_automatically` is the
/// rules engine's alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Fixed,
    NoFaultFound,
    Duplicate,
    Other,
}

impl Resolution {
    pub const ALL: [Resolution; 4] = [
        Resolution::Fixed,
        Resolution::NoFaultFound,
        Resolution::Duplicate,
        Resolution::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Fixed => "fixed",
            Resolution::NoFaultFound => "no_fault_found",
            Resolution::Duplicate => "duplicate",
            Resolution::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Resolution> {
        Resolution::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Why a change is refused. The message says what would be allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("a work order cannot go from {from} to {to}; from {from} it can go to: {allowed}")]
    NoSuchTransition {
        from: Status,
        to: Status,
        allowed: String,
    },
    #[error("only {who} may {action} this work order")]
    NotPermitted {
        action: &'static str,
        who: &'static str,
    },
    #[error("resolution: say how the work ended (fixed, no_fault_found, duplicate or other)")]
    ResolutionRequired,
    #[error("resolution applies only when completing a work order")]
    ResolutionNotApplicable,
    #[error("comment: say why ({action} needs a reason)")]
    ReasonRequired { action: &'static str },
    #[error("assign the work order first (POST .../assign) before it can {action}")]
    AssigneeRequired { action: &'static str },
    #[error("a {status} work order can no longer be assigned")]
    AssignClosed { status: Status },
    #[error(
        "only admins and managers assign work orders; a technician may take an open, unassigned one for themself"
    )]
    AssignNotPermitted,
}

impl FlowError {
    /// Whether the refusal is about the caller (403) rather than the request (400/409).
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            FlowError::NotPermitted { .. } | FlowError::AssignNotPermitted
        )
    }
}

/// What a status change asks for besides its target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub resolution: Option<Resolution>,
    pub comment: Option<&'a str>,
}

/// Checks a change from `from` to `to` by `actor`; `has_assignee` tells whether the work order
/// has a user or team assigned. Returns the transition that applies.
pub fn transition(
    from: Status,
    to: Status,
    actor: Actor,
    has_assignee: bool,
    request: Request<'_>,
) -> Result<&'static Transition, FlowError> {
    let Some(step) = TRANSITIONS.iter().find(|t| t.from == from && t.to == to) else {
        let allowed: Vec<&str> = TRANSITIONS
            .iter()
            .filter(|t| t.from == from)
            .map(|t| t.to.as_str())
            .collect();
        return Err(FlowError::NoSuchTransition {
            from,
            to,
            allowed: if allowed.is_empty() {
                "nothing (it is final)".to_owned()
            } else {
                allowed.join(", ")
            },
        });
    };
    if !step.who.allows(actor, from) {
        return Err(FlowError::NotPermitted {
            action: step.action,
            who: step.who.describe(),
        });
    }
    if request.resolution.is_some() && step.needs != Needs::Resolution {
        return Err(FlowError::ResolutionNotApplicable);
    }
    match step.needs {
        Needs::Nothing => {}
        Needs::Resolution if request.resolution.is_none() => {
            return Err(FlowError::ResolutionRequired);
        }
        Needs::Resolution => {}
        Needs::Reason if request.comment.is_none_or(|c| c.trim().is_empty()) => {
            return Err(FlowError::ReasonRequired {
                action: step.action,
            });
        }
        Needs::Reason => {}
        Needs::Assignee if !has_assignee => {
            return Err(FlowError::AssigneeRequired {
                action: step.action,
            });
        }
        Needs::Assignee => {}
    }
    Ok(step)
}

/// What an assignment change does to the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub status: Status,
}

/// Checks an assignment change on a work order in `status`: `assigning` is false when the
/// assignee is removed; `to_self` when the caller assigns the work order to themself alone.
/// Returns the status the work order is in afterwards.
pub fn assignment(
    status: Status,
    has_assignee: bool,
    actor: Actor,
    assigning: bool,
    to_self: bool,
) -> Result<Assignment, FlowError> {
    if status.is_closed() {
        return Err(FlowError::AssignClosed { status });
    }
    let claim = actor.role == Role::Technician
        && assigning
        && to_self
        && status == Status::Open
        && !has_assignee;
    if !actor.role.supervises() && !claim {
        return Err(FlowError::AssignNotPermitted);
    }
    let status = match (status, assigning) {
        (Status::Open, true) => Status::Assigned,
        (Status::Assigned, false) => Status::Open,
        (other, _) => other,
    };
    Ok(Assignment { status })
}

/// The transition table as Markdown, as `docs/WORK-ORDERS.md` shows it.
pub fn markdown_table() -> String {
    let mut out = String::from("| From | To | Action | Who may | Needs |\n|---|---|---|---|---|\n");
    for t in TRANSITIONS {
        let needs = match t.needs {
            Needs::Nothing => "-",
            Needs::Resolution => "`resolution`",
            Needs::Reason => "`comment` (the reason)",
            Needs::Assignee => "an assignee",
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            t.from,
            t.to,
            t.action,
            t.who.describe(),
            needs
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(role: Role, is_assignee: bool, is_requester: bool) -> Actor {
        Actor {
            role,
            is_assignee,
            is_requester,
        }
    }

    /// Every actor the table distinguishes: each role, assigned or not, requester or not.
    fn actors() -> Vec<Actor> {
        let mut all = Vec::new();
        for role in Role::ALL {
            for is_assignee in [false, true] {
                for is_requester in [false, true] {
                    all.push(actor(role, is_assignee, is_requester));
                }
            }
        }
        all
    }

    /// What the table says, written out by hand as (from, to, who may): the test that every
    /// pair of statuses and every actor gets the answer the documented table gives.
    fn expected(from: Status, to: Status, a: Actor) -> bool {
        use Status::*;
        let supervisor = a.role.supervises();
        let worker = supervisor || (a.role == Role::Technician && a.is_assignee);
        match (from, to) {
            (Assigned, InProgress) | (InProgress, OnHold) | (OnHold, InProgress) => worker,
            (InProgress, Completed) => worker,
            (Open, InProgress) | (Completed, Verified) | (Completed, InProgress) => supervisor,
            (Open, Cancelled) => supervisor || (a.is_requester && a.role != Role::Viewer),
            (Assigned | InProgress | OnHold, Cancelled) => supervisor,
            _ => false,
        }
    }

    fn full_request(from: Status, to: Status) -> Request<'static> {
        Request {
            resolution: (from == Status::InProgress && to == Status::Completed)
                .then_some(Resolution::Fixed),
            comment: Some("because"),
        }
    }

    #[test]
    fn every_pair_of_statuses_for_every_actor_follows_the_table() {
        for from in Status::ALL {
            for to in Status::ALL {
                for a in actors() {
                    let got = transition(from, to, a, true, full_request(from, to));
                    assert_eq!(
                        got.is_ok(),
                        expected(from, to, a),
                        "{from} -> {to} by {a:?}: {got:?}"
                    );
                    if let Err(e) = got {
                        let exists = TRANSITIONS.iter().any(|t| t.from == from && t.to == to);
                        assert_eq!(e.is_permission(), exists, "{from} -> {to}: {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn final_statuses_go_nowhere() {
        for to in Status::ALL {
            for from in [Status::Verified, Status::Cancelled] {
                let e = transition(
                    from,
                    to,
                    actor(Role::Admin, true, true),
                    true,
                    full_request(from, to),
                )
                .unwrap_err();
                assert!(e.to_string().contains("nothing (it is final)"), "{e}");
            }
        }
    }

    #[test]
    fn a_refused_change_names_the_allowed_ones() {
        let e = transition(
            Status::Open,
            Status::Completed,
            actor(Role::Admin, false, false),
            false,
            Request::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a work order cannot go from open to completed; from open it can go to: in_progress, cancelled"
        );
    }

    #[test]
    fn completing_needs_a_resolution_and_nothing_else_takes_one() {
        let tech = actor(Role::Technician, true, false);
        assert_eq!(
            transition(
                Status::InProgress,
                Status::Completed,
                tech,
                true,
                Request::default()
            ),
            Err(FlowError::ResolutionRequired)
        );
        let with = Request {
            resolution: Some(Resolution::NoFaultFound),
            comment: None,
        };
        assert!(transition(Status::InProgress, Status::Completed, tech, true, with).is_ok());
        assert_eq!(
            transition(Status::OnHold, Status::InProgress, tech, true, with),
            Err(FlowError::ResolutionNotApplicable)
        );
    }

    #[test]
    fn holding_cancelling_and_reopening_need_a_reason() {
        let boss = actor(Role::Manager, false, false);
        for (from, to) in [
            (Status::InProgress, Status::OnHold),
            (Status::Open, Status::Cancelled),
            (Status::Completed, Status::InProgress),
        ] {
            for comment in [None, Some("  ")] {
                let r = Request {
                    resolution: None,
                    comment,
                };
                assert!(
                    matches!(
                        transition(from, to, boss, true, r),
                        Err(FlowError::ReasonRequired { .. })
                    ),
                    "{from} -> {to} with {comment:?}"
                );
            }
        }
    }

    #[test]
    fn starting_an_assigned_work_order_needs_its_assignee() {
        let boss = actor(Role::Manager, false, false);
        assert!(matches!(
            transition(
                Status::Assigned,
                Status::InProgress,
                boss,
                false,
                Request::default()
            ),
            Err(FlowError::AssigneeRequired { .. })
        ));
    }

    #[test]
    fn assignment_moves_between_open_and_assigned_only() {
        let boss = actor(Role::Manager, false, false);
        let cases = [
            (Status::Open, true, Status::Assigned),
            (Status::Assigned, true, Status::Assigned),
            (Status::Assigned, false, Status::Open),
            (Status::InProgress, true, Status::InProgress),
            (Status::InProgress, false, Status::InProgress),
            (Status::OnHold, true, Status::OnHold),
            (Status::Open, false, Status::Open),
        ];
        for (from, assigning, after) in cases {
            assert_eq!(
                assignment(from, true, boss, assigning, false),
                Ok(Assignment { status: after }),
                "{from} assigning={assigning}"
            );
        }
        for closed in [Status::Completed, Status::Verified, Status::Cancelled] {
            assert_eq!(
                assignment(closed, true, boss, true, false),
                Err(FlowError::AssignClosed { status: closed })
            );
        }
    }

    #[test]
    fn a_technician_may_only_take_an_open_unassigned_work_order_for_themself() {
        let tech = actor(Role::Technician, false, false);
        assert_eq!(
            assignment(Status::Open, false, tech, true, true),
            Ok(Assignment {
                status: Status::Assigned
            })
        );
        for (status, has_assignee, assigning, to_self) in [
            (Status::Open, false, true, false),
            (Status::Open, true, true, true),
            (Status::Assigned, true, true, true),
            (Status::Assigned, true, false, false),
        ] {
            assert_eq!(
                assignment(status, has_assignee, tech, assigning, to_self),
                Err(FlowError::AssignNotPermitted)
            );
        }
        for role in [Role::Requester, Role::Viewer] {
            assert_eq!(
                assignment(Status::Open, false, actor(role, false, true), true, true),
                Err(FlowError::AssignNotPermitted)
            );
        }
    }

    #[test]
    fn the_documented_table_is_the_code_s() {
        let doc = include_str!("../../docs/WORK-ORDERS.md");
        assert!(
            doc.contains(&markdown_table()),
            "docs/WORK-ORDERS.md must contain the transition table as work_order_flow::markdown_table prints it:\n{}",
            markdown_table()
        );
    }
}
