//! Helpers shared by the integration tests that run real QEMU.

#![allow(dead_code)]

pub mod fake_fc;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Physical load address of the tiny guest.
const LOAD: u64 = 0x10_0000;

/// Write a minimal x86 kernel that boots via PVH (an ELF64 with a
/// `XEN_ELFNOTE_PHYS32_ENTRY` note, like a real `vmlinux`): in 32-bit
/// protected mode it writes `message` to COM1 and halts forever. It ignores
/// ACPI, so it never powers itself off.
pub fn write_pvh_kernel(path: &Path, message: &str) {
    let mut msg = message.as_bytes().to_vec();
    msg.push(0);
    // mov edx, 0x3f8 ; mov esi, <msg> ; loop: lodsb ; test al, al ; jz done ;
    // out dx, al ; jmp loop ; done: hlt ; jmp done
    let mut code: Vec<u8> = vec![0xBA, 0xF8, 0x03, 0x00, 0x00, 0xBE, 0, 0, 0, 0];
    code.extend([
        0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8, 0xF4, 0xEB, 0xFD,
    ]);
    let msg_addr = u32::try_from(LOAD).unwrap() + u32::try_from(code.len()).unwrap();
    code[6..10].copy_from_slice(&msg_addr.to_le_bytes());
    code.extend(&msg);

    let mut note = Vec::new();
    for v in [4u32, 4, 18] {
        note.extend(v.to_le_bytes()); // namesz, descsz, type = PHYS32_ENTRY
    }
    note.extend(b"Xen\0");
    note.extend(u32::try_from(LOAD).unwrap().to_le_bytes());

    let (ehsize, phentsize, phnum) = (64u16, 56u16, 2u16);
    let note_off = u64::from(ehsize) + u64::from(phentsize) * u64::from(phnum);
    let code_off = 0x1000u64;
    let mut elf = Vec::new();
    elf.extend(b"\x7fELF");
    elf.extend([2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    elf.extend([0u8; 8]);
    elf.extend(2u16.to_le_bytes()); // ET_EXEC
    elf.extend(0x3Eu16.to_le_bytes()); // x86-64
    elf.extend(1u32.to_le_bytes());
    elf.extend(LOAD.to_le_bytes()); // e_entry
    elf.extend(u64::from(ehsize).to_le_bytes()); // e_phoff
    elf.extend(0u64.to_le_bytes()); // e_shoff
    elf.extend(0u32.to_le_bytes()); // e_flags
    for v in [ehsize, phentsize, phnum, 64, 0, 0] {
        elf.extend(v.to_le_bytes());
    }
    let code_len = u64::try_from(code.len()).unwrap();
    let note_len = u64::try_from(note.len()).unwrap();
    // PT_LOAD (R+X) and PT_NOTE.
    for (ptype, flags, off, addr, len, align) in [
        (1u32, 5u32, code_off, LOAD, code_len, 0x1000u64),
        (4, 4, note_off, 0, note_len, 4),
    ] {
        elf.extend(ptype.to_le_bytes());
        elf.extend(flags.to_le_bytes());
        for v in [off, addr, addr, len, len, align] {
            elf.extend(v.to_le_bytes());
        }
    }
    elf.extend(&note);
    elf.resize(usize::try_from(code_off).unwrap(), 0);
    elf.extend(&code);
    std::fs::write(path, elf).unwrap();
}

/// The QEMU binary, or `None` (the test skips, saying why) when absent.
/// Absent QEMU fails the test with `BANGER_REQUIRE_PRIVILEGED=1` (CI) or
/// `BANGER_REQUIRE_QEMU` (a developer who wants these tests to run).
pub fn qemu_binary() -> Option<PathBuf> {
    const QEMU: &str = "qemu-system-x86_64";
    if let Some(path) = banger_test_support::which(QEMU) {
        return Some(path);
    }
    assert!(
        std::env::var_os("BANGER_REQUIRE_QEMU").is_none(),
        "{QEMU} is not on PATH and BANGER_REQUIRE_QEMU is set"
    );
    let ok = banger_test_support::Gate::new().tool(QEMU).check();
    debug_assert!(!ok, "which() and the gate disagree about {QEMU}");
    None
}

/// Kills a VMM process left behind by a failing test.
pub struct KillOnDrop {
    pub pid: u32,
    pub start_time: u64,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(Some(fd)) = banger_vmm::process::Pidfd::open_verified(self.pid, self.start_time) {
            let _ = fd.signal(libc::SIGKILL);
        }
    }
}

/// Poll `path` until it contains `needle` or `limit` passes; returns the content.
pub async fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if text.contains(needle) || tokio::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
