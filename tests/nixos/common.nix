# The machine every test starts from: the module enabled for `alice`, and a
# second user `mallory` who must get nothing from banger.
{ self }:
{
  machine = { lib, pkgs, ... }: {
    imports = [ self.nixosModules.default ];
    environment.systemPackages = [ pkgs.curl ];
    users.users.alice = { isNormalUser = true; uid = 1000; };
    users.users.mallory = { isNormalUser = true; uid = 1001; };
    services.banger = {
      enable = true;
      owner = "alice";
    };
    virtualisation = {
      memorySize = 3072;
      cores = 2;
      diskSize = 8192;
    };
  };

  # A shell command run as a user with a login environment, single-quoted so
  # it can sit inside the test script's double-quoted Python strings (so the
  # command itself must not contain quotes or backslashes).
  asUser = user: cmd:
    if builtins.match ".*['\"\\].*" cmd != null
    then throw "asUser: quote-free commands only: ${cmd}"
    else "su - ${user} -c '${cmd}'";
}
