//! Image and kernel records.
//!
//! `bangerd` keeps rows here only for **registered** artifacts (host-side
//! files used in place, `managed = false`): managed bundles are described by
//! their own `manifest.json` in the store under the state dir, so the store
//! is their only truth and no row can disagree with it.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::sql::{self, PathCol, SqlPath};
use crate::{ArtifactSource, StateDb, StateError, Timestamp};

/// An installed (or registered) root filesystem image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Name of the kernel it boots with.
    pub kernel_ref: String,
    pub rootfs_path: PathBuf,
    /// `None` for a registered image nobody hashed.
    pub rootfs_sha256: Option<String>,
    pub size_bytes: u64,
    pub source: ArtifactSource,
    /// Whether the file lives in banger's store (deleted with the record)
    /// rather than at a user's path.
    pub managed: bool,
    /// Hash of the recipe it was built from, when known.
    pub recipe_hash: Option<String>,
    pub created_at: Timestamp,
}

/// An installed (or registered) kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRecord {
    pub name: String,
    pub version: String,
    /// The ELF `vmlinux`.
    pub vmlinux_path: PathBuf,
    pub initrd_path: Option<PathBuf>,
    /// The `lib/modules/<version>` tree.
    pub modules_path: Option<PathBuf>,
    /// sha256 of `vmlinux`, when known.
    pub sha256: Option<String>,
    pub source: ArtifactSource,
    /// Whether the files live in banger's store.
    pub managed: bool,
    pub created_at: Timestamp,
}

const SELECT_IMAGE: &str = "SELECT name, version, arch, kernel_ref, rootfs_path, rootfs_sha256,
    size_bytes, source, managed, recipe_hash, created_at FROM images";

fn image_from_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        name: r.get(0)?,
        version: r.get(1)?,
        arch: r.get(2)?,
        kernel_ref: r.get(3)?,
        rootfs_path: r.get::<_, PathCol>(4)?.0,
        rootfs_sha256: r.get(5)?,
        size_bytes: r.get(6)?,
        source: r.get(7)?,
        managed: r.get(8)?,
        recipe_hash: r.get(9)?,
        created_at: r.get(10)?,
    })
}

const SELECT_KERNEL: &str = "SELECT name, version, vmlinux_path, initrd_path, modules_path,
    sha256, source, managed, created_at FROM kernels";

fn kernel_from_row(r: &Row<'_>) -> rusqlite::Result<KernelRecord> {
    Ok(KernelRecord {
        name: r.get(0)?,
        version: r.get(1)?,
        vmlinux_path: r.get::<_, PathCol>(2)?.0,
        initrd_path: r.get::<_, Option<PathCol>>(3)?.map(|p| p.0),
        modules_path: r.get::<_, Option<PathCol>>(4)?.map(|p| p.0),
        sha256: r.get(5)?,
        source: r.get(6)?,
        managed: r.get(7)?,
        created_at: r.get(8)?,
    })
}

impl StateDb {
    /// Insert a new image; an existing name gives [`StateError::AlreadyExists`].
    pub fn insert_image(&self, image: &ImageRecord) -> Result<(), StateError> {
        self.write_image(image, true)
    }

    /// Replace every field of the existing image `image.name` (re-pull,
    /// promote into the managed store); [`StateError::NotFound`] if absent.
    pub fn update_image(&self, image: &ImageRecord) -> Result<(), StateError> {
        self.write_image(image, false)
    }

    fn write_image(&self, i: &ImageRecord, insert: bool) -> Result<(), StateError> {
        let (verb, sql) = if insert {
            (
                "insert",
                "INSERT INTO images (name, version, arch, kernel_ref, rootfs_path, rootfs_sha256,
                    size_bytes, source, managed, recipe_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
        } else {
            (
                "update",
                "UPDATE images SET version = ?2, arch = ?3, kernel_ref = ?4, rootfs_path = ?5,
                    rootfs_sha256 = ?6, size_bytes = ?7, source = ?8, managed = ?9,
                    recipe_hash = ?10, created_at = ?11
                 WHERE name = ?1",
            )
        };
        let op = format!("{verb} image {:?}", i.name);
        let n = self
            .conn
            .execute(
                sql,
                params![
                    i.name,
                    i.version,
                    i.arch,
                    i.kernel_ref,
                    SqlPath(&i.rootfs_path),
                    i.rootfs_sha256,
                    i.size_bytes,
                    i.source,
                    i.managed,
                    i.recipe_hash,
                    i.created_at,
                ],
            )
            .map_err(|e| match sql::unique_violation(&e) {
                Some(_) => self.already_exists("image", "name", i.name.clone()),
                None => self.query_error(&op, e),
            })?;
        if n == 0 {
            return Err(self.not_found("image", &i.name));
        }
        Ok(())
    }

    /// The image called `name`.
    pub fn get_image(&self, name: &str) -> Result<Option<ImageRecord>, StateError> {
        self.conn
            .query_row(
                &format!("{SELECT_IMAGE} WHERE name = ?1"),
                [name],
                image_from_row,
            )
            .optional()
            .map_err(|e| self.query_error(&format!("read image {name:?}"), e))
    }

    /// Every image, by name.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>, StateError> {
        self.collect(
            &format!("{SELECT_IMAGE} ORDER BY name"),
            [],
            image_from_row,
            "list images",
        )
    }

    /// Names of the images whose `kernel_ref` is `kernel`.
    pub fn images_using_kernel(&self, kernel: &str) -> Result<Vec<String>, StateError> {
        let op = format!("find images using kernel {kernel:?}");
        let sql = "SELECT name FROM images WHERE kernel_ref = ?1 ORDER BY name";
        self.collect(sql, [kernel], |r| r.get(0), &op)
    }

    /// Delete image `name` unless a VM uses it ([`StateError::InUse`] naming
    /// the VMs); the check and the delete are one transaction. Returns
    /// whether it existed.
    pub fn delete_image(&self, name: &str) -> Result<bool, StateError> {
        let op = format!("delete image {name:?}");
        self.write(&op, |tx| {
            let users = query_names(tx, "SELECT 'VM ' || name FROM vms WHERE image = ?1", name)
                .map_err(|e| self.query_error(&op, e))?;
            if !users.is_empty() {
                return Err(self.in_use("image", name, users));
            }
            let n = tx
                .execute("DELETE FROM images WHERE name = ?1", [name])
                .map_err(|e| self.query_error(&op, e))?;
            Ok(n > 0)
        })
    }

    /// Insert a new kernel; an existing name gives [`StateError::AlreadyExists`].
    pub fn insert_kernel(&self, kernel: &KernelRecord) -> Result<(), StateError> {
        self.write_kernel(kernel, true)
    }

    /// Replace every field of the existing kernel `kernel.name`;
    /// [`StateError::NotFound`] if absent.
    pub fn update_kernel(&self, kernel: &KernelRecord) -> Result<(), StateError> {
        self.write_kernel(kernel, false)
    }

    fn write_kernel(&self, k: &KernelRecord, insert: bool) -> Result<(), StateError> {
        let (verb, sql) = if insert {
            (
                "insert",
                "INSERT INTO kernels (name, version, vmlinux_path, initrd_path, modules_path,
                    sha256, source, managed, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
        } else {
            (
                "update",
                "UPDATE kernels SET version = ?2, vmlinux_path = ?3, initrd_path = ?4,
                    modules_path = ?5, sha256 = ?6, source = ?7, managed = ?8, created_at = ?9
                 WHERE name = ?1",
            )
        };
        let op = format!("{verb} kernel {:?}", k.name);
        let n = self
            .conn
            .execute(
                sql,
                params![
                    k.name,
                    k.version,
                    SqlPath(&k.vmlinux_path),
                    k.initrd_path.as_deref().map(SqlPath),
                    k.modules_path.as_deref().map(SqlPath),
                    k.sha256,
                    k.source,
                    k.managed,
                    k.created_at,
                ],
            )
            .map_err(|e| match sql::unique_violation(&e) {
                Some(_) => self.already_exists("kernel", "name", k.name.clone()),
                None => self.query_error(&op, e),
            })?;
        if n == 0 {
            return Err(self.not_found("kernel", &k.name));
        }
        Ok(())
    }

    /// The kernel called `name`.
    pub fn get_kernel(&self, name: &str) -> Result<Option<KernelRecord>, StateError> {
        self.conn
            .query_row(
                &format!("{SELECT_KERNEL} WHERE name = ?1"),
                [name],
                kernel_from_row,
            )
            .optional()
            .map_err(|e| self.query_error(&format!("read kernel {name:?}"), e))
    }

    /// Every kernel, by name.
    pub fn list_kernels(&self) -> Result<Vec<KernelRecord>, StateError> {
        self.collect(
            &format!("{SELECT_KERNEL} ORDER BY name"),
            [],
            kernel_from_row,
            "list kernels",
        )
    }

    /// Delete kernel `name` unless an image or VM uses it
    /// ([`StateError::InUse`] naming them), in one transaction. Returns
    /// whether it existed.
    pub fn delete_kernel(&self, name: &str) -> Result<bool, StateError> {
        let op = format!("delete kernel {name:?}");
        self.write(&op, |tx| {
            let users = query_names(
                tx,
                "SELECT 'image ' || name FROM images WHERE kernel_ref = ?1
                 UNION ALL SELECT 'VM ' || name FROM vms WHERE kernel = ?1",
                name,
            )
            .map_err(|e| self.query_error(&op, e))?;
            if !users.is_empty() {
                return Err(self.in_use("kernel", name, users));
            }
            let n = tx
                .execute("DELETE FROM kernels WHERE name = ?1", [name])
                .map_err(|e| self.query_error(&op, e))?;
            Ok(n > 0)
        })
    }

    /// Drop the row of image `name` without the in-use check (its files
    /// were copied into the store by a promote, so the name stays usable).
    /// Returns whether it existed.
    pub fn remove_registered_image(&self, name: &str) -> Result<bool, StateError> {
        let op = format!("remove registered image {name:?}");
        self.write(&op, |tx| {
            tx.execute("DELETE FROM images WHERE name = ?1", [name])
                .map(|n| n > 0)
                .map_err(|e| self.query_error(&op, e))
        })
    }

    /// Drop the row of kernel `name` without the in-use check (promote).
    /// Returns whether it existed.
    pub fn remove_registered_kernel(&self, name: &str) -> Result<bool, StateError> {
        let op = format!("remove registered kernel {name:?}");
        self.write(&op, |tx| {
            tx.execute("DELETE FROM kernels WHERE name = ?1", [name])
                .map(|n| n > 0)
                .map_err(|e| self.query_error(&op, e))
        })
    }

    fn in_use(&self, kind: &'static str, key: &str, users: Vec<String>) -> StateError {
        StateError::InUse {
            path: self.path.clone(),
            kind,
            key: key.to_owned(),
            users,
        }
    }
}

fn query_names(conn: &rusqlite::Connection, sql: &str, key: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let names = stmt.query_map([key], |r| r.get(0))?;
    names.collect()
}
