// The chat on the gateway's own page (web/widget.html): the API on this origin, the customer's token and session
// in localStorage (the demo sign-in, or a token a shop's page stored there).
import { apiClient, localStore } from "./common.js";
import { mountChat } from "./chat.js";

mountChat(document, { api: apiClient("", localStore()) });
