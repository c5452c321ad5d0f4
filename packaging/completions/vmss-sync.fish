# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_vmss_sync_global_optspecs
    string join \n h/help V/version
end

function __fish_vmss_sync_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_vmss_sync_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_vmss_sync_using_subcommand
    set -l cmd (__fish_vmss_sync_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -s V -l version -d 'Print version'
complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -f -a "run" -d 'Run the daemon: reconcile every sync_interval until SIGTERM'
complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -f -a "once" -d 'One full reconcile of every upstream, then exit (0 in sync, 1 failed, 2 bad config)'
complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -f -a "plan" -d 'Show what a reconcile would add, remove and update; write nothing'
complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -f -a "validate" -d 'Check the configuration file without network access'
complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -f -a "generate" -d 'Write the man page or a shell completion script to standard output (packaging)'
complete -c vmss-sync -n "__fish_vmss_sync_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand run" -s c -l config -d 'Configuration file (nginx-asg-sync\'s format)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand run" -l log-file -d 'Also append logs to this file (as nginx-asg-sync\'s -log_path)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand run" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand once" -s c -l config -d 'Configuration file (nginx-asg-sync\'s format)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand once" -l log-file -d 'Also append logs to this file (as nginx-asg-sync\'s -log_path)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand once" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand plan" -s c -l config -d 'Configuration file (nginx-asg-sync\'s format)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand plan" -l log-file -d 'Also append logs to this file (as nginx-asg-sync\'s -log_path)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand plan" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand validate" -s c -l config -d 'Configuration file (nginx-asg-sync\'s format)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand validate" -l log-file -d 'Also append logs to this file (as nginx-asg-sync\'s -log_path)' -r -F
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand validate" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and not __fish_seen_subcommand_from man completions help" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and not __fish_seen_subcommand_from man completions help" -f -a "man" -d 'The man page, vmss-sync(1), in roff'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and not __fish_seen_subcommand_from man completions help" -f -a "completions" -d 'The completion script for a shell'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and not __fish_seen_subcommand_from man completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and __fish_seen_subcommand_from man" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and __fish_seen_subcommand_from completions" -s h -l help -d 'Print help'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "man" -d 'The man page, vmss-sync(1), in roff'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "completions" -d 'The completion script for a shell'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and not __fish_seen_subcommand_from run once plan validate generate help" -f -a "run" -d 'Run the daemon: reconcile every sync_interval until SIGTERM'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and not __fish_seen_subcommand_from run once plan validate generate help" -f -a "once" -d 'One full reconcile of every upstream, then exit (0 in sync, 1 failed, 2 bad config)'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and not __fish_seen_subcommand_from run once plan validate generate help" -f -a "plan" -d 'Show what a reconcile would add, remove and update; write nothing'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and not __fish_seen_subcommand_from run once plan validate generate help" -f -a "validate" -d 'Check the configuration file without network access'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and not __fish_seen_subcommand_from run once plan validate generate help" -f -a "generate" -d 'Write the man page or a shell completion script to standard output (packaging)'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and not __fish_seen_subcommand_from run once plan validate generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and __fish_seen_subcommand_from generate" -f -a "man" -d 'The man page, vmss-sync(1), in roff'
complete -c vmss-sync -n "__fish_vmss_sync_using_subcommand help; and __fish_seen_subcommand_from generate" -f -a "completions" -d 'The completion script for a shell'
