# The shell of the DIALS terminal (dials-terminal): the user's own ~/.bashrc, then a prompt
# that keeps the window titled "DIALS" (Debian's ~/.bashrc retitles it to user@host).
if [ -f "$HOME/.bashrc" ]; then
  . "$HOME/.bashrc"
fi
PS1='\[\e]0;DIALS\a\]dials:\w\$ '
PROMPT_COMMAND=
dials.version
echo "DIALS's commands are dials.* (type dials. and press Tab); help: dials.COMMAND -h"
