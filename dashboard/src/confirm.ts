/** One confirmation dialog for the whole page: `await ask({...})` resolves true when confirmed. */
import { reactive } from "vue";

export interface Question {
  title: string;
  body: string;
  confirm: string;
  danger?: boolean;
}

export const dialog = reactive({ open: false, question: null as Question | null, resolve: null as ((ok: boolean) => void) | null });

export function ask(question: Question): Promise<boolean> {
  dialog.resolve?.(false);
  return new Promise((resolve) => {
    dialog.question = question;
    dialog.resolve = resolve;
    dialog.open = true;
  });
}

export function answer(ok: boolean): void {
  const resolve = dialog.resolve;
  dialog.open = false;
  dialog.resolve = null;
  resolve?.(ok);
}
