import { useEffect, useState } from "react";
import { type AuthState, authState, subscribe } from "../api/auth";

/** The session's API key and whether the API has asked for one, re-rendered as they change. */
export function useApiKey(): AuthState {
  const [state, setState] = useState<AuthState>(authState);
  useEffect(() => {
    setState(authState()); // a 401 may have come between the first render and this effect
    return subscribe(setState);
  }, []);
  return state;
}
