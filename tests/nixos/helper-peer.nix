# Only the owner gets anything from banger: mallory (in the same `users`
# group, so she can reach the helper's socket file) is refused by the root
# helper's SO_PEERCRED check, and cannot open the owner's daemon socket
# (0600: sharing the primary group grants nothing, docs/security.md).
{ pkgs, self, common }:
let
  ping = pkgs.writeShellScript "banger-helper-ping" ''
    echo '{"op":"ping"}' \
      | ${pkgs.socat}/bin/socat -t5 - UNIX-CONNECT:/run/banger-root/bangerd-root.sock
  '';
in
{
  name = "banger-helper-peer";
  nodes.machine = common.machine;

  testScript = ''
    machine.wait_for_unit("bangerd-root.service")
    machine.wait_for_unit("bangerd.service")

    out = machine.succeed("${common.asUser "alice" "${ping}"}")
    assert "pong" in out, out

    out = machine.succeed("${common.asUser "mallory" "${ping} || true"}")
    assert "peer_rejected" in out, out

    machine.fail("${common.asUser "mallory" "curl -sf --unix-socket /run/banger/bangerd.sock http://x/v1/status"}")
    out = machine.fail("${common.asUser "mallory" "banger daemon status 2>&1"}")
    assert "permission denied on the bangerd socket" in out, out
    machine.succeed("test \"$(stat -c %U:%a /run/banger/bangerd.sock)\" = alice:600")
  '';
}
