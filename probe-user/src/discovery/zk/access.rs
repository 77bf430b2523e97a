//! Who may do what with our znodes: the one rule for the ACLs of everything we create
//! (directories and ephemeral znodes alike), and the take-over of directories left
//! world-writable by agents without authentication.
//!
//! ZooKeeper checks CREATE and DELETE of a znode on its PARENT, WRITE (data) and ADMIN (ACL) on
//! the znode itself. With credentials, every znode we create grants ALL to `sasl:<user>` (the
//! identity every agent shares) and, with ZK_WORLD_READ, READ to `world:anyone`: nobody else
//! can register, rewrite or delete a member, nor change an ACL.

use std::sync::Arc;

use tracing::warn;
use zookeeper_client::{self as zk, Acl, Acls, AuthId, CreateMode, Permission};

use super::auth::ZkAuth;

/// The ACLs of every znode we create.
#[derive(Clone, Debug)]
pub(super) struct Access {
    acls: Arc<[Acl]>,
    /// `sasl:<user>`, `None` without credentials (world ALL).
    owner: Option<String>,
}

impl Access {
    pub(super) fn of(auth: Option<&ZkAuth>) -> Access {
        let Some(auth) = auth else {
            return Access {
                acls: Acls::anyone_all().to_vec().into(),
                owner: None,
            };
        };
        let mut acls = vec![Acl::new(
            Permission::ALL,
            AuthId::new("sasl", &auth.username),
        )];
        if auth.world_read {
            acls.push(Acl::new(Permission::READ, AuthId::anyone()));
        }
        Access {
            acls: acls.into(),
            owner: Some(format!("sasl:{}", auth.username)),
        }
    }

    /// For the directories (`mkdir` creates missing ancestors with them too).
    pub(super) fn persistent(&self) -> zk::CreateOptions<'_> {
        CreateMode::Persistent.with_acls(Acls::new(&self.acls))
    }

    /// For our registration and index entry.
    pub(super) fn ephemeral(&self) -> zk::CreateOptions<'_> {
        CreateMode::Ephemeral.with_acls(Acls::new(&self.acls))
    }

    /// Why ZooKeeper may have answered NoAuth, for the error log.
    pub(super) fn no_auth_hint(&self) -> String {
        match &self.owner {
            Some(owner) => format!(
                "the znode's ACL does not let {owner} do this: every agent must use the same \
                 ZK_SASL_USERNAME, and the directories must have been created by it (or be \
                 world-writable)"
            ),
            None => "the znode's ACL requires authentication: set ZK_SASL_USERNAME and \
                     ZK_SASL_PASSWORD_FILE like the other agents"
                .into(),
        }
    }

    /// With credentials: restricts `dir` to our ACLs if anyone may write it (created by an
    /// agent without authentication), since CREATE and DELETE on it would let anybody add or
    /// remove members. An ACL that does not grant the world more than READ is the operator's
    /// and left alone. Only failures of the session are returned.
    pub(super) async fn secure(&self, client: &zk::Client, dir: &str) -> Result<(), zk::Error> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        let (current, stat) = match client.get_acl(dir).await {
            Ok(x) => x,
            Err(zk::Error::NoNode) => return Ok(()),
            Err(zk::Error::NoAuth) => {
                warn!(
                    dir,
                    "cannot read the ACL of {dir} as {owner}; not checking it"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if !world_writable(&current) {
            return Ok(());
        }
        match client.set_acl(dir, &self.acls, Some(stat.aversion)).await {
            Ok(_) => warn!(
                dir,
                was = %show(&current),
                now = %show(&self.acls),
                "{dir} was world-writable (created without authentication): anybody could add \
                 or remove members; restricted it to {owner}"
            ),
            // Somebody changed it meanwhile: checked again in the next session.
            Err(zk::Error::BadVersion | zk::Error::NoNode) => {}
            Err(zk::Error::NoAuth) => warn!(
                dir,
                acl = %show(&current),
                "{dir} is world-writable, so anybody can add or remove members, and {owner} may \
                 not change its ACL: an operator should (zkCli: setAcl {dir} {})",
                show(&self.acls)
            ),
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Does the world get more than READ?
fn world_writable(acls: &[Acl]) -> bool {
    acls.iter().any(|a| {
        *a.auth_id() == AuthId::anyone()
            && [
                Permission::WRITE,
                Permission::CREATE,
                Permission::DELETE,
                Permission::ADMIN,
            ]
            .into_iter()
            .any(|p| a.permission().has(p))
    })
}

/// ACLs as zkCli writes them: `sasl:agent:cdrwa,world:anyone:r`.
fn show(acls: &[Acl]) -> String {
    let perms = |p: Permission| {
        [
            (Permission::CREATE, 'c'),
            (Permission::DELETE, 'd'),
            (Permission::READ, 'r'),
            (Permission::WRITE, 'w'),
            (Permission::ADMIN, 'a'),
        ]
        .into_iter()
        .filter(|(bit, _)| p.has(*bit))
        .map(|(_, c)| c)
        .collect::<String>()
    };
    acls.iter()
        .map(|a| format!("{}:{}:{}", a.scheme(), a.id(), perms(a.permission())))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(world_read: bool) -> ZkAuth {
        ZkAuth {
            username: "agent".into(),
            password_file: "/dev/null".into(),
            world_read,
        }
    }

    #[test]
    fn acls_by_mode() {
        assert_eq!(show(&Access::of(None).acls), "world:anyone:cdrwa");
        assert_eq!(
            show(&Access::of(Some(&auth(false))).acls),
            "sasl:agent:cdrwa"
        );
        assert_eq!(
            show(&Access::of(Some(&auth(true))).acls),
            "sasl:agent:cdrwa,world:anyone:r"
        );
    }

    #[test]
    fn only_world_write_rights_count_as_open() {
        assert!(world_writable(&Access::of(None).acls));
        assert!(!world_writable(&Access::of(Some(&auth(true))).acls));
        assert!(!world_writable(&Access::of(Some(&auth(false))).acls));
        let create = [Acl::new(Permission::CREATE, AuthId::anyone())];
        assert!(world_writable(&create));
        let other = [Acl::new(Permission::ALL, AuthId::new("sasl", "admin"))];
        assert!(!world_writable(&other));
    }
}
