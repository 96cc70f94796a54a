# Both units start from the module, and the owner's daily commands work
# without sudo.
{ pkgs, self, common }:
{
  name = "banger-units";
  nodes.machine = common.machine;

  testScript = ''
    machine.wait_for_unit("bangerd-root.service")
    machine.wait_for_unit("bangerd.service")

    # The helper runs as root with only its bounding set; the daemon as alice.
    machine.succeed("test \"$(systemctl show -p User --value bangerd.service)\" = alice")
    caps = machine.succeed("systemctl show -p CapabilityBoundingSet --value bangerd-root.service")
    for cap in ["cap_net_admin", "cap_chown", "cap_sys_admin"]:
        assert cap in caps, caps
    assert "cap_sys_module" not in caps, caps

    machine.succeed("test -S /run/banger/bangerd.sock")
    machine.succeed("test -S /run/banger-root/bangerd-root.sock")
    machine.succeed("test \"$(stat -c %U:%a /var/lib/banger)\" = alice:750")
    machine.succeed("test \"$(stat -c %U:%a /run/banger-root)\" = root:750")
    machine.succeed("grep -q 'owner_user = \"alice\"' /etc/banger/install.toml")

    print(machine.succeed("${common.asUser "alice" "banger daemon status"}"))
    print(machine.succeed("${common.asUser "alice" "banger doctor"}"))
    machine.succeed("${common.asUser "alice" "curl -sf --unix-socket /run/banger/bangerd.sock http://x/v1/status"}")

    # The hardening holds: the daemon has no capabilities at all.
    pid = machine.succeed("systemctl show -p MainPID --value bangerd.service").strip()
    eff = machine.succeed(f"grep CapEff /proc/{pid}/status").split()[1]
    assert int(eff, 16) == 0, eff

    # In the daemon's mount namespace the home is read-only except banger's
    # directories, which banger-home.service made as alice.
    machine.succeed("test \"$(stat -c %U:%a /home/alice/.config/banger)\" = alice:700")
    machine.succeed("test \"$(stat -c %U:%a /home/alice/.local/state/banger)\" = alice:700")
    machine.fail(f"nsenter -t {pid} -m -- touch /home/alice/.bashrc")
    machine.fail(f"nsenter -t {pid} -m -- mkdir /home/alice/.ssh")
    machine.succeed(f"nsenter -t {pid} -m -- touch /home/alice/.local/state/banger/probe")

    # Restarting keeps working (RuntimeDirectoryPreserve, tmpfiles).
    machine.succeed("systemctl restart bangerd-root.service bangerd.service")
    machine.wait_for_unit("bangerd.service")
    machine.succeed("${common.asUser "alice" "banger daemon status"}")
  '';
}
